"""The ``spqr`` command line: convert, eval, inspect, hash, meta, verify, split, merge, decode, export-hf,
conformance, generate, import, export -- one module per command (``add_parser`` / ``add_arguments`` / ``run``).

Every failure is one ``error: ...`` line on stderr and an exit code from
:data:`EXIT_CODES`; no input, however hostile, gets a traceback. Commands are
looked up by name in this module (``_cmd_<name>``) when they run, so a test can
replace one.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..errors import SpqrFormatError
from ..paths import UsageError
from ..scratch import live_scratch_files, remove_scratch_files
from . import (
    conformance,
    convert,
    decode,
    eval,  # noqa: A004 - the command's name
    export,
    export_hf,
    generate,
    hash,  # noqa: A004 - the command's name
    import_,
    inspect,
    merge,
    meta,
    split,
    verify,
)
from ._common import EPILOG, EXIT_CODES, HF_EXTRA, _eprint, _error, _float_in, _int_in, _safe, resolve_device

COMMANDS = (convert, eval, inspect, hash, meta, verify, split, merge, decode, export_hf, conformance, generate,
            import_, export)

_cmd_convert = convert.run
_cmd_eval = eval.run
_cmd_inspect = inspect.run
_cmd_hash = hash.run
_cmd_meta = meta.run
_cmd_verify = verify.run
_cmd_split = split.run
_cmd_merge = merge.run
_cmd_decode = decode.run
_cmd_export_hf = export_hf.run
_cmd_conformance = conformance.run
_cmd_generate = generate.run
_cmd_import = import_.run
_cmd_export = export.run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spqr",
        description="spqrfmt: convert, evaluate, inspect, verify and decode .spqr compressed-weight files.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"spqrfmt {__version__} (format v1.0)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def _func(command: str) -> Callable[[argparse.Namespace], int]:
    return globals()["_cmd_" + command.replace("-", "_")]


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every writer removes its temporary files as on Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _run(func: Callable[[], int]) -> int:
    """Run a command; every failure becomes one ``error:`` line and a code from EXIT_CODES."""
    try:
        code = func()
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 141
    except _Terminated:
        _eprint("error: terminated; no partial output was left behind")
        return 143
    except KeyboardInterrupt:
        _eprint("error: interrupted; no partial output was left behind")
        return 130
    except UsageError as e:
        return _error(e, 2)
    except SpqrFormatError as e:
        return _error(e, 1)
    except OSError as e:  # a path that cannot be read or written: no such file, loop, name too long, disk full
        where = f"{e.filename}: " if e.filename else ""
        return _error(f"{where}{e.strerror or e}", 2)
    except ValueError as e:  # an input a library call refused with a message (malformed checkpoint, text, config)
        return _error(e, 1)
    except RecursionError:
        return _error("input is nested too deeply to process", 1)
    except MemoryError:
        return _error("out of memory (an input declares more data than this machine can hold)", 3)
    except Exception as e:  # noqa: BLE001 - the backstop: never a traceback
        return _error(f"internal error: {type(e).__name__}: {e} (please report this with the command line)", 3)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    previous = None
    before = live_scratch_files()  # an embedding program's own open writers are not this command's
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        if raw[:1] == ["conformance"]:  # argparse.REMAINDER drops a remainder that starts with an option
            return _run(lambda: _func("conformance")(argparse.Namespace(rest=raw[1:])))
        args = build_parser().parse_args(raw)
        return _run(lambda: _func(args.command)(args))
    finally:
        remove_scratch_files(keep=before)  # whatever a signal interrupted: no temporary file outlives the command
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# Shared with the command modules outside this package (generate, import, export).
__all__ = ["COMMANDS", "EXIT_CODES", "HF_EXTRA", "_error", "_float_in", "_int_in", "_safe", "build_parser", "main",
           "resolve_device"]
