"""What every ``spqr`` command shares: exit codes, the one ``error:`` line, flag types, device choice."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from ..argtypes import float_in as _float_in
from ..argtypes import int_in as _int_in
from ..argtypes import stat_bits as _stat_bits
from ..paths import UsageError
from ..summary import safe as _safe

EXIT_CODES = {
    0: "success",
    1: "invalid or unsupported input: a file that breaks the spec, a malformed checkpoint or import source, "
       "a failed check",
    2: "usage error: bad or conflicting flags, a path that is missing or not a regular file, an output that "
       "would overwrite an input, a missing optional dependency or device",
    3: "internal error (a bug: please report it with the command line)",
    130: "interrupted (Ctrl-C); no partial output is left behind",
    143: "terminated (SIGTERM); no partial output is left behind",
    141: "stdout was closed early (spqr inspect FILE | head): stops quietly",
}
EPILOG = ("exit codes:\n" + "\n".join(f"  {k:<4d}{v}" for k, v in EXIT_CODES.items())
          + "\n\nSpec: spec/SPEC.md. Every command takes --help.")
HF_EXTRA = ("pip install 'spqrfmt[hf]'  (torch + transformers + safetensors; for CPU-only, install a CPU build "
            "of torch first)")

__all__ = ["EPILOG", "EXIT_CODES", "HF_EXTRA", "_eprint", "_error", "_float_in", "_int_in", "_meta_pair", "_regex",
           "_safe", "_stat_bits", "resolve_device"]


def _eprint(*a: Any) -> None:
    print(*a, file=sys.stderr)


def _error(message: Any, code: int) -> int:
    """Print one ``error:`` line (newlines folded) and return ``code``."""
    _eprint("error: " + _safe(" ".join(str(message).split("\n"))))  # no terminal escapes from hostile names
    return code


# ---- flag value types (argparse turns their ValueError into a usage error, exit 2) -------


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid regular expression: {e}") from None
    return text


def _meta_pair(text: str) -> tuple[str, str]:
    """KEY=VALUE of ``--metadata``; the key non-empty and not reserved for the reference tools (SPEC §7)."""
    from ..rewrite import is_reserved

    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    if is_reserved(key):
        raise argparse.ArgumentTypeError(f"key {key!r} is reserved for the reference tools (prefix 'spqrfmt.')")
    return key, value


def resolve_device(name: str | None, flag: str = "--device") -> str:
    """``name`` checked against this machine (default: cuda if available); UsageError otherwise."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{flag} {name}: not a device; use cpu or cuda[:N]") from None
    if dev.type == "cpu":
        return name
    if dev.type != "cuda":
        raise UsageError(f"{flag} {name}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise UsageError(f"{flag} {name}: no CUDA GPU is available to torch on this machine; use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name
