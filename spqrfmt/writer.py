"""Streaming, atomic writer of .spqr files.

Sections are appended to a scratch data file as tensors are added, so the
whole model never sits in memory; ``close()`` then writes preamble + header +
data to a temporary file next to the target and renames it into place. An
interrupted write leaves no file under the target name (spec/SPEC.md §11).
The header is put through the reader's own checks before any byte of the
file is written, so the writer cannot produce a file the reader rejects.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import codecs
from .dtypes import ITEMSIZE, STORAGE, name_of
from .errors import ErrorCode, SpqrFormatError, fail
from .format import (
    ALIGNMENT,
    MAJOR,
    MAX_HEADER_LENGTH,
    MINOR,
    PREAMBLE_SIZE,
    Preamble,
    align64,
    crc32,
    pack_header,
    pack_preamble,
    unpack_header,
)
from .paths import new_file_mode
from .records import SectionRecord, TensorRecord, check_name, check_shape, parse_records
from .scratch import discard, replaced_atomically, scratch_file
from .version import __version__

SectionInput = np.ndarray | tuple[str, np.ndarray]


def checked_header(header: dict[str, Any], data_length: int) -> bytes:
    """Encode a header and run the reader's stage 3-4 rules on the bytes (SPEC §3, §4, §10).

    Raises the SpqrFormatError the reader would raise for the finished file (BAD_NAME,
    BAD_HEADER for nesting / container limits / non-str keys, HEADER_TOO_LARGE, ...).
    """
    try:
        raw = pack_header(header)
    except (ValueError, OverflowError) as e:  # nesting beyond msgpack's own limit, ints beyond 64 bits
        raise fail(ErrorCode.BAD_HEADER, f"header cannot be encoded as restricted msgpack: {e}") from None
    if len(raw) > MAX_HEADER_LENGTH:
        raise fail(ErrorCode.HEADER_TOO_LARGE, f"header would be {len(raw)} bytes, at most {MAX_HEADER_LENGTH}")
    parse_records(unpack_header(raw), data_length)
    return raw


def _hold_signals() -> object:
    """Block SIGINT and SIGTERM in this thread (POSIX); the previous mask, or None where unsupported."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def _release_signals(held: object) -> None:
    """Restore the mask _hold_signals saved; a signal that arrived meanwhile is handled now."""
    import signal

    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _as_section(value: SectionInput) -> tuple[str, np.ndarray]:
    """(dtype name, little-endian C-contiguous array); pass ('bf16', uint16 bits) for bf16."""
    if isinstance(value, tuple):
        dtype, arr = value
        arr = np.asarray(arr, dtype=STORAGE[dtype], order="C")
        return dtype, arr
    arr = np.asarray(value, order="C")
    dtype = name_of(arr.dtype)
    return dtype, np.asarray(arr, dtype=STORAGE[dtype], order="C")


def write_atomic(path: Path, header: bytes, data_length: int, copy_data: Callable[[Any], None],
                 mode: int | None = None) -> None:
    """Preamble + ``header`` + zero padding + the data ``copy_data(out)`` writes, into a temporary file beside
    ``path`` that is renamed onto it (SPEC §11): an interruption leaves ``path`` as it was and no temporary file.

    ``mode``: the new file's permission bits (default: what the umask gives a new file).
    """
    pre = Preamble(MAJOR, MINOR, crc32(header), len(header), data_length)
    with replaced_atomically(path) as (fd, _tmp), os.fdopen(fd, "wb") as out:
        out.write(pack_preamble(pre))
        out.write(header)
        out.write(b"\0" * (pre.data_offset - PREAMBLE_SIZE - len(header)))
        copy_data(out)
        out.flush()
        if out.tell() != pre.data_offset + data_length:
            raise OSError(f"{path}: wrote {out.tell()} bytes, expected {pre.data_offset + data_length}")
        os.fchmod(out.fileno(), new_file_mode() if mode is None else mode)  # scratch files are made 0600
        os.fsync(out.fileno())


def checked_record(name: str, shape: tuple[int, ...], dtype: str, codec: str, codec_version: int,
                   params: Mapping[str, Any], sections: Mapping[str, SectionInput]
                   ) -> tuple[TensorRecord, dict[str, tuple[str, np.ndarray]], dict[str, Any]]:
    """A tensor held in memory, checked by the reader's rules before any byte is written or decoded:
    (its record with offsets 0, the typed sections role -> (dtype, array), the codec's checked params)."""
    shape = check_shape(list(shape), "tensor", name)
    typed = {role: _as_section(v) for role, v in sections.items()}
    probe = TensorRecord(
        name, shape, dtype, codec, codec_version, dict(params),
        {r: SectionRecord(d, tuple(a.shape), 0, a.size * ITEMSIZE[d], 0) for r, (d, a) in typed.items()},
    )
    codec_impl = codecs.get(probe)
    checked = codec_impl.check_record(probe)
    codec_impl.check_content(probe, {r: a for r, (_d, a) in typed.items()})
    return probe, typed, checked


class Writer:
    """Write tensors one at a time, then ``close()`` (or use as a context manager).

    Every tensor of a known codec is checked with the same rules the reader
    applies before it is accepted, so the writer cannot produce a file the
    reader rejects.
    """

    def __init__(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.metadata: dict[str, Any] = {"spqrfmt.writer": f"spqrfmt-python {__version__}"}  # SPEC §7
        if metadata:
            self.metadata.update(metadata)
        checked_header({"metadata": self.metadata, "tensors": []}, 0)  # fail before the scratch file exists
        self._records: list[TensorRecord] = []
        self._names: set[str] = set()
        # Ctrl-C / SIGTERM (which the CLI turns into exceptions) are held back while the scratch file is
        # created, so the exception can never land between its creation and the point where this
        # constructor can still remove it: a signal that came meanwhile is raised on unblocking. (Where a
        # worker thread takes the signal instead, the CLI's remove_scratch_files still finds the file.)
        held = _hold_signals()
        try:
            fd, self._data_path = scratch_file(self.path.parent, f".{self.path.name}.", ".data")
            self._data = os.fdopen(fd, "w+b")
        except BaseException:
            _release_signals(held)
            raise
        self._pos = 0
        self._closed = False
        try:
            _release_signals(held)
        except BaseException:
            self._discard_data()
            raise

    def _append(self, arr: np.ndarray, dtype: str) -> SectionRecord:
        pad = align64(self._pos) - self._pos
        if pad:
            self._data.write(b"\0" * pad)
            self._pos += pad
        raw = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
        self._data.write(raw)
        rec = SectionRecord(dtype, tuple(arr.shape), self._pos, arr.size * ITEMSIZE[dtype], crc32(raw))
        self._pos += rec.length
        return rec

    def add(
        self,
        name: str,
        *,
        shape: tuple[int, ...],
        dtype: str,
        codec: str,
        params: Mapping[str, Any],
        sections: Mapping[str, SectionInput],
        codec_version: int = 1,
    ) -> None:
        """Add one tensor given its codec params and section arrays (roles as in the codec spec)."""
        if self._closed:
            raise ValueError("writer is closed")
        if not isinstance(name, str):
            raise TypeError(f"tensor name must be a str, got {type(name).__name__}")
        check_name(name, f"tensor {name[:80]!r}")
        if name in self._names:
            raise fail(ErrorCode.DUPLICATE_NAME, f"tensor {name!r} was already written", name)
        probe, typed, _params = checked_record(name, shape, dtype, codec, codec_version, params, sections)
        recs = {role: self._append(a, d) for role, (d, a) in typed.items()}
        self._records.append(TensorRecord(name, probe.shape, dtype, codec, codec_version, dict(params), recs))
        self._names.add(name)

    def add_raw(self, name: str, array: np.ndarray, dtype: str | None = None) -> None:
        """Add an unquantized tensor; pass dtype='bf16' with uint16 bit patterns for bfloat16."""
        dtype = dtype or name_of(np.asarray(array).dtype)
        self.add(name, shape=tuple(np.shape(array)), dtype=dtype, codec="raw", params={},
                 sections={"data": (dtype, np.asarray(array))})

    def add_encoded(self, name: str, encoded: Any, dtype: str = "f16") -> None:
        """Add the output of an encoder (anything with codec, codec_version, params, sections, shape)."""
        self.add(name, shape=encoded.shape, dtype=dtype, codec=encoded.codec, params=encoded.params,
                 sections=encoded.sections, codec_version=encoded.codec_version)

    def close(self) -> None:
        """Check the header, write header + data to a temp file and atomically rename it to the target path.

        On any failure (a header the reader would reject included) the target is untouched and
        no scratch or temp file is left behind.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._data.flush()
            header = checked_header({"metadata": self.metadata, "tensors": [r.to_header() for r in self._records]},
                                    self._pos)

            def copy_data(out: Any) -> None:
                self._data.seek(0)
                shutil.copyfileobj(self._data, out, length=16 << 20)

            write_atomic(self.path, header, self._pos, copy_data)
        finally:
            self._discard_data()

    def abort(self) -> None:
        """Drop everything written so far; the target path is left untouched."""
        self._closed = True
        self._discard_data()

    def _discard_data(self) -> None:
        self._data.close()
        discard(self._data_path)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


__all__ = ["Writer", "SpqrFormatError", "ALIGNMENT", "checked_header"]
