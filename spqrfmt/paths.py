"""Checks on the paths a command reads and writes, run before any byte is read or written.

Why: opening a FIFO blocks forever, a device node replaced by a regular file
or an input overwritten by its own output loses the user's data. Every
command checks its inputs are regular files (or folders) and that no output
is one of its inputs, before it starts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path


class UsageError(ValueError):
    """A path or setting the command cannot use (the CLI prints it as one ``error:`` line, exit 2)."""


def _stat(path: Path, what: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} not found") from None
    except OSError as e:  # symlink loop, name too long, a file used as a folder, no permission
        raise UsageError(f"{what} {path}: {e.strerror or e}") from None


def input_file(path: str | os.PathLike[str], what: str = "input") -> Path:
    """``path`` if it is a regular file (after symlinks); a FIFO, device or folder is refused."""
    p = Path(path)
    st = _stat(p, what)
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {p} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{what} {p} is not a regular file (a FIFO, socket or device is never read)")
    return p


def input_dir(path: str | os.PathLike[str], what: str = "input folder", *, plain: bool = False) -> Path:
    """``path`` if it is a folder (after symlinks).

    ``plain``: also every entry in it is a regular file or a folder, for a folder
    that a third-party loader (transformers) reads whole: a FIFO there would block it.
    """
    p = Path(path)
    if not stat.S_ISDIR(_stat(p, what).st_mode):
        raise UsageError(f"{what} {p} is not a folder")
    for entry in sorted(p.iterdir()) if plain else ():
        mode = _stat(entry, f"{what} entry").st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UsageError(f"{what} entry {entry} is not a regular file (a FIFO, socket or device is never read)")
    return p


def output_file(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """``path`` if writing it replaces no input and no non-regular file, in an existing folder.

    An output that is an input (the same file by inode, through any link or
    spelling) would destroy it before it is read; a device or FIFO would be
    replaced by a regular file by the atomic rename.
    """
    p = Path(path)
    if p.name in ("", ".", ".."):
        raise UsageError(f"output {path} names a folder, not a file")
    parent = p.parent
    try:
        pst = os.stat(parent)
    except OSError as e:
        raise UsageError(f"output folder {parent}: {e.strerror or e}") from None
    if not stat.S_ISDIR(pst.st_mode):
        raise UsageError(f"output folder {parent} is not a folder")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise UsageError(f"output {p} is a dangling symbolic link") from None
        return p
    except OSError as e:
        raise UsageError(f"output {p}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"output {p} exists and is not a regular file; refusing to replace it")
    for q in inputs:
        try:
            same = os.path.samefile(p, q)
        except OSError:
            same = False
        if same:
            raise UsageError(f"output {p} is the input {q}; refusing to overwrite an input (pass another -o)")
    return p


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is set-and-return,
    so reading it that way races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process umask (mkstemp's are always 0o600)."""
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    """The mode ``mkdir`` would give a new folder: 0o777 less the process umask (mkdtemp's is always 0o700)."""
    return 0o777 & ~_umask()


def display_name(folder: str | os.PathLike[str]) -> str:
    """A folder's own name, never a local absolute path (``.`` gives the real folder's name)."""
    return Path(os.path.realpath(folder)).name or "model"


__all__ = ["UsageError", "display_name", "input_dir", "input_file", "new_dir_mode", "new_file_mode", "output_file"]
