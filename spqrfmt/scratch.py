"""Temporary files beside an output, which the process must never leave behind.

Why: every write goes to a temporary file that is renamed onto the target (SPEC §11). A Ctrl-C or
SIGTERM turned into an exception can land anywhere, also between a file's creation and the ``try``
meant to remove it, and blocking signals with ``pthread_sigmask`` does not help once worker threads
exist (the kernel may deliver the signal to any thread that has not blocked it, and Python then runs
the handler in the main thread). So each name is registered *before* its file is created, and the
CLI removes whatever is still registered when a command ends (:func:`remove_scratch_files`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Temporary files this process created (or is creating) and has not yet removed or renamed.
_LIVE: set[str] = set()


def scratch_file(directory: str | os.PathLike[str], prefix: str, suffix: str) -> tuple[int, str]:
    """(fd, path) of a new empty file ``directory/prefix<random>suffix`` (mode 0600, O_EXCL), registered."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(os.fspath(directory) or ".", f"{prefix}{secrets.token_hex(6)}{suffix}")
        _LIVE.add(name)
        try:
            return os.open(name, flags, 0o600), name
        except FileExistsError:  # somebody else's file: not ours to remove
            _LIVE.discard(name)
        # any other exception leaves the name registered: the file may exist (an interrupt just after
        # its creation), and removing a name that was never created is harmless
    raise FileExistsError(f"no free temporary file name in {directory}")


def discard(name: str) -> None:
    """Remove a temporary file (if it is still there) and forget it."""
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
    _LIVE.discard(name)


@contextmanager
def replaced_atomically(path: Path, suffix: str = ".tmp") -> Iterator[tuple[int, str]]:
    """Yield (fd, temp path) beside ``path``; on success the temp file is renamed onto ``path``, on any
    exception it is removed and ``path`` is left as it was. The caller closes ``fd``."""
    fd, tmp = scratch_file(path.parent, f".{path.name}.", suffix)
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    finally:
        _LIVE.discard(tmp)


def live_scratch_files() -> frozenset[str]:
    """The registered temporary files now (so a command can later remove only the ones it made)."""
    return frozenset(_LIVE)


def remove_scratch_files(keep: frozenset[str] = frozenset()) -> None:
    """Remove every registered temporary file not in ``keep`` that still exists (a command's last step)."""
    for name in list(_LIVE - keep):
        discard(name)


__all__ = ["discard", "live_scratch_files", "remove_scratch_files", "replaced_atomically", "scratch_file"]
