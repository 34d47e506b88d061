"""``spqr verify``: validate every rule of the spec, including all checksums"""

from __future__ import annotations

import argparse

from ..errors import SpqrFormatError
from ..paths import UsageError, input_file
from ..summary import safe as _safe


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "verify", help="validate every rule of the spec, including all checksums",
                       description="Check preamble, header, every tensor's codec rules, section CRC-32s and index "
                       "contents (CSR, permutations). Exit 0 if all files are valid, 1 otherwise.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+")
    p.add_argument("--decode", action="store_true", help="also decode every tensor")


def _verify_one(path: str, decode: bool) -> list[str]:
    """The problems of one file, each a line (empty: valid); never raises for a bad or missing file."""
    from ..split import open_model

    try:
        # pread, not mmap: a file another process truncates meanwhile is TRUNCATED here, never a SIGBUS
        with open_model(input_file(path), verify_checksums=True, mmap=False) as f:
            results = f.check_all()
            bad = [f"{_safe(n)}: {e}" for n, e in results if e is not None]
            if decode and not bad:
                for t in f.tensors.values():
                    t.decode()
    except (SpqrFormatError, UsageError) as e:
        return [str(e)]
    except OSError as e:
        return [f"cannot read: {e.strerror or e}"]
    except MemoryError:
        return ["not enough memory to check it"]
    return bad


def run(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        problems = _verify_one(path, args.decode)
        for p in problems:
            print(f"{_safe(path)}: FAIL {p}")
        if problems:
            status = 1
        else:
            print(f"{_safe(path)}: OK (header, every tensor and all section checksums verified"
                  f"{', all decoded' if args.decode else ''})")
    return status


