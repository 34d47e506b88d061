"""Split sets (SPEC §12): one model as ``NAME-00001-of-0000N.spqr`` parts plus ``NAME.spqr.index.json``.

Why a module of its own: a set is a layer above the single-file reader. Each
part is an ordinary .spqr file (opened by :class:`~spqrfmt.reader.SpqrFile`);
this module checks the index (names inside its folder, SHA-256 and size of
every part, each tensor in exactly one part) and presents the parts as one
mapping. Splitting and merging copy section bytes verbatim and lay sections out
as the writer does, so ``merge(split(f))`` is byte-identical to a file the
writer produced.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ErrorCode, SpqrFormatError, fail
from .format import MAX_HEADER_LENGTH, align64
from .paths import new_file_mode
from .reader import SpqrFile, Tensor
from .scratch import replaced_atomically
from .writer import checked_header, write_atomic

INDEX_FORMAT = "spqrfmt-split"
INDEX_VERSION = 1
INDEX_SUFFIX = ".spqr.index.json"
MAX_INDEX_BYTES = 64 << 20
MAX_PARTS = 99999
PART_RE = re.compile(r"^(?P<name>.+)-(?P<i>[0-9]{5})-of-(?P<n>[0-9]{5})\.spqr$")
CHUNK = 16 << 20


def part_name(name: str, i: int, n: int) -> str:
    """The file name of part ``i`` (1-based) of ``n``: ``NAME-00001-of-00003.spqr``."""
    return f"{name}-{i:05d}-of-{n:05d}.spqr"


def index_for(path: str | os.PathLike[str]) -> Path | None:
    """The index of the set whose first part is ``path`` (``NAME-00001-of-N.spqr``, N > 1), else None.

    Only the first part stands for the set: any other part is a valid file alone and opens as one.
    """
    p = Path(path)
    m = PART_RE.match(p.name)
    if m is None or m["i"] != "00001" or m["n"] == "00001":
        return None
    return p.with_name(m["name"] + INDEX_SUFFIX)


def is_index(path: str | os.PathLike[str]) -> bool:
    return Path(path).name.endswith(INDEX_SUFFIX)


def _bad(message: str) -> SpqrFormatError:
    return fail(ErrorCode.BAD_SPLIT, message)


def _check_part_file(name: Any, i: int) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise _bad(f"part #{i} file {str(name)[:80]!r} is not a plain file name in the index's folder")
    return name


def _not_json(word: str) -> Any:
    raise ValueError(f"{word} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON leaves a repeated key's meaning open (first or last wins): SPEC §12 rejects it."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError("an object repeats a key")
    return doc


def read_index(path: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The index's parts and tensor map, every field checked (BAD_SPLIT); paths are not opened yet."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _bad(f"index {path.name} is missing") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever
        raise _bad(f"index {path.name} is not a regular file")
    if st.st_size > MAX_INDEX_BYTES:
        raise _bad(f"index has {st.st_size} bytes, at most {MAX_INDEX_BYTES}")
    try:
        doc = json.loads(path.read_bytes()[:MAX_INDEX_BYTES + 1].decode("utf-8"), parse_constant=_not_json,
                         object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _bad(f"index is not UTF-8 JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise _bad(f"index is not a map with \"format\": \"{INDEX_FORMAT}\"")
    if type(doc.get("version")) is not int or doc["version"] != INDEX_VERSION:  # not true, not 1.0
        raise _bad(f"index version {doc.get('version')!r} is not supported (this reader knows {INDEX_VERSION})")
    parts, tensors = doc.get("parts"), doc.get("tensors")
    if not isinstance(parts, list) or not 1 <= len(parts) <= MAX_PARTS:
        raise _bad(f"'parts' must be an array of 1 to {MAX_PARTS} entries")
    if not isinstance(tensors, dict):
        raise _bad("'tensors' must be a map from tensor name to part index")
    seen: set[str] = set()
    for i, p in enumerate(parts):
        if not isinstance(p, dict):
            raise _bad(f"part #{i} is not a map")
        name = _check_part_file(p.get("file"), i)
        if name in seen:
            raise _bad(f"part file {name!r} is listed twice")
        seen.add(name)
        digest, nbytes = p.get("sha256"), p.get("bytes")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _bad(f"part {name!r}: 'sha256' must be 64 lowercase hex digits")
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
            raise _bad(f"part {name!r}: 'bytes' must be a non-negative integer")
    for t, k in tensors.items():
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(parts):
            raise fail(ErrorCode.BAD_SPLIT, f"part index {k!r} is not one of 0..{len(parts) - 1}", t)
    return parts, tensors


def _sha256_regular(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a regular file, streamed (a FIFO or device is refused, never read)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # checked before fdopen, which fails on a directory
        os.close(fd)
        raise _bad(f"part {path.name} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        h, n = hashlib.sha256(), 0
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


@dataclass(frozen=True)
class SetTotals:
    """The set's header and data lengths summed over its parts (what ``spqr inspect`` reports)."""

    header_length: int
    data_length: int


class SplitFile(Mapping[str, Tensor]):
    """An open split set: a read-only mapping from tensor name to :class:`Tensor`, like :class:`SpqrFile`.

    Opening checks the index, every part's size and streamed SHA-256, each part as a file
    (SPEC §10 stages 1-4) and that the parts hold exactly the index's tensors, each once.
    ``metadata`` is the first part's (every part carries the same, SPEC §12).
    """

    def __init__(self, index: str | os.PathLike[str], *, verify_checksums: bool = True,
                 max_header_length: int = MAX_HEADER_LENGTH, mmap: bool = True) -> None:
        self.path = Path(index)
        self.verify_checksums = verify_checksums
        parts, index_tensors = read_index(self.path)
        paths = [self.path.parent / p["file"] for p in parts]
        self.parts: list[SpqrFile] = []
        self.tensors: dict[str, Tensor] = {}
        # SPEC §12's reject table in its order: every part there, every size and SHA-256, every part as a
        # file, then each tensor in one part, then the parts against the index's tensor map.
        for p, part in zip(parts, paths, strict=True):
            try:
                mode = os.stat(part).st_mode
            except (FileNotFoundError, NotADirectoryError):
                raise _bad(f"part {p['file']!r} is missing") from None
            if not stat.S_ISREG(mode):
                raise _bad(f"part {p['file']!r} is not a regular file")
        for p, part in zip(parts, paths, strict=True):
            digest, nbytes = _sha256_regular(part)
            if nbytes != p["bytes"]:
                raise _bad(f"part {p['file']!r} has {nbytes} bytes, the index says {p['bytes']}")
            if digest != p["sha256"]:
                raise _bad(f"part {p['file']!r} SHA-256 is {digest}, the index says {p['sha256']}")
        try:
            for part in paths:
                self.parts.append(SpqrFile(part, verify_checksums=verify_checksums,
                                           max_header_length=max_header_length, mmap=mmap))
            owner: dict[str, int] = {}
            for i, f in enumerate(self.parts):
                for name in f.tensors:
                    if name in owner:
                        raise fail(ErrorCode.DUPLICATE_NAME, f"tensor is in two parts ({parts[owner[name]]['file']!r} "
                                   f"and {parts[i]['file']!r})", name)
                    owner[name] = i
            for name, i in owner.items():
                if index_tensors.get(name) != i:
                    raise fail(ErrorCode.BAD_SPLIT, f"part {parts[i]['file']!r} holds the tensor, the index says "
                               f"part {index_tensors.get(name)!r}", name)
            missing = [t for t in index_tensors if t not in owner]
            if missing:
                raise fail(ErrorCode.BAD_SPLIT, f"{len(missing)} tensor(s) of the index are in no part", missing[0])
            self.tensors = {name: t for f in self.parts for name, t in f.tensors.items()}
        except BaseException:
            self.close()
            raise
        self.metadata: dict[str, Any] = self.parts[0].metadata
        self.header: dict[str, Any] = self.parts[0].header
        self.preamble = SetTotals(sum(f.preamble.header_length for f in self.parts),
                                  sum(f.preamble.data_length for f in self.parts))

    @property
    def version(self) -> tuple[int, int]:
        return max(f.version for f in self.parts)

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def check_all(self) -> list[tuple[str, SpqrFormatError | None]]:
        """Check every tensor of every part; one (name, error or None) entry per tensor."""
        return [item for f in self.parts for item in f.check_all()]

    def validate(self) -> None:
        """Every rule for every tensor of every part; raise the first SpqrFormatError."""
        for f in self.parts:
            f.validate()

    def close(self) -> None:
        for f in self.parts:
            f.close()

    def __enter__(self) -> SplitFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SplitFile {str(self.path)!r} {len(self.parts)} parts {len(self)} tensors>"


def open_model(path: str | os.PathLike[str], *, verify_checksums: bool = True,
               max_header_length: int = MAX_HEADER_LENGTH, mmap: bool = True) -> SpqrFile | SplitFile:
    """Open a .spqr file, or a split set given its index or its first part (``spqrfmt.open``)."""
    index = path if is_index(path) else index_for(path)
    if index is None:
        return SpqrFile(path, verify_checksums=verify_checksums, max_header_length=max_header_length, mmap=mmap)
    if not is_index(path) and not Path(index).exists():
        raise _bad(f"{Path(path).name} is the first part of a split set, but its index {Path(index).name} "
                   "is missing")
    return SplitFile(index, verify_checksums=verify_checksums, max_header_length=max_header_length, mmap=mmap)


# ---- writing ----------------------------------------------------------------------------


def _tensor_bytes(t: Tensor) -> int:
    """Data bytes ``t`` takes when laid out alone (each section 64-aligned, as the writer does)."""
    pos = 0
    for s in t.record.sections.values():
        pos = align64(pos) + s.length
    return pos


def plan_parts(f: SpqrFile | SplitFile, split_size: int) -> list[list[str]]:
    """Tensor names per part in file order: a part takes tensors while its data fits ``split_size``
    bytes (a tensor larger than that gets a part of its own)."""
    if split_size < 1:
        raise ValueError("split size must be at least 1 byte")
    groups: list[list[str]] = [[]]
    used = 0
    for name, t in f.tensors.items():
        size = _tensor_bytes(t)
        if groups[-1] and align64(used) + size > split_size:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used = align64(used) + size if used else size
    if len(groups) > MAX_PARTS:
        raise ValueError(f"{len(groups)} parts, at most {MAX_PARTS}: pass a larger split size")
    return groups


def _raw_records(f: SpqrFile | SplitFile) -> dict[str, dict[str, Any]]:
    """Each tensor's header record as stored (every key kept), by name."""
    files = f.parts if isinstance(f, SplitFile) else [f]
    return {rec["name"]: rec for g in files for rec in g.header["tensors"]}


def _write_tensors(f: SpqrFile | SplitFile, names: list[str], path: Path) -> None:
    """One .spqr file holding ``names`` of ``f`` with ``f``'s header (metadata and other keys), sections
    copied verbatim and laid out as the writer lays them out."""
    raw = _raw_records(f)
    records, spans, pos = [], [], 0
    for name in names:
        rec = copy.deepcopy(raw[name])
        t = f.tensors[name]
        for role, s in t.record.sections.items():
            pos = align64(pos)
            rec["sections"][role]["offset"] = pos
            spans.append((t, s, pos))
            pos += s.length
        records.append(rec)
    header = dict(f.header)
    header["tensors"] = records
    raw_header = checked_header(header, pos)

    def copy_data(out: Any) -> None:
        at = 0
        for t, s, offset in spans:
            out.write(b"\0" * (offset - at))
            start = t._file._data_offset + s.offset
            for p in range(0, s.length, CHUNK):
                out.write(t._file._read(start + p, min(CHUNK, s.length - p)))
            at = offset + s.length

    write_atomic(path, raw_header, pos, copy_data)


def split_file(f: SpqrFile | SplitFile, split_size: int, prefix: str | os.PathLike[str]) -> Path:
    """Write ``f`` as a split set ``PREFIX-0000i-of-0000N.spqr`` + ``PREFIX.spqr.index.json``; the index path.

    Every part is written atomically and the index last, so an interrupted split leaves no index
    (and removes the parts it wrote). ``f`` should be validated by the caller.
    """
    prefix = Path(prefix)
    groups = plan_parts(f, split_size)
    n = len(groups)
    index = prefix.with_name(prefix.name + INDEX_SUFFIX)
    written: list[Path] = []
    try:
        entries, where = [], {}
        for i, names in enumerate(groups):
            part = prefix.with_name(part_name(prefix.name, i + 1, n))
            _write_tensors(f, names, part)
            written.append(part)
            digest, nbytes = _sha256_regular(part)
            entries.append({"file": part.name, "sha256": digest, "bytes": nbytes})
            where.update({name: i for name in names})
        doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "parts": entries, "tensors": where}
        with replaced_atomically(index) as (fd, _tmp), os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=1, ensure_ascii=False)
            out.write("\n")
            os.fchmod(out.fileno(), new_file_mode())
            os.fsync(out.fileno())
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return index


def merge_set(s: SplitFile, output: str | os.PathLike[str]) -> Path:
    """Write the set ``s`` as one .spqr file (atomically): its tensors in part order, the first part's header."""
    out = Path(output)
    names = [name for f in s.parts for name in f.tensors]
    _write_tensors(s, names, out)
    return out


def part_paths(path: str | os.PathLike[str]) -> list[Path]:
    """The files a set named by its index reads (the index and each part), for overwrite checks."""
    index = Path(path) if is_index(path) else index_for(path)
    if index is None:
        return [Path(path)]
    parts, _ = read_index(index)
    return [index, *(index.parent / p["file"] for p in parts)]


__all__ = ["INDEX_SUFFIX", "SplitFile", "index_for", "is_index", "merge_set", "open_model", "part_name",
           "part_paths", "plan_parts", "read_index", "split_file"]
