"""Split-set vectors (spec/SPEC.md §12): each set is a folder with its index and parts.

Why a generator of its own: a set is several files, so its vectors are folders rather than blobs, and
its defects live between the files (index against parts) rather than inside one. Parts are laid out by
``miniwriter`` like every other vector; the index is written here from the §12 text. The invalid sets
each break one row of the §12 reject table (or one structure rule of the index), and a few break two
rows at once to pin the order in which §12 says a reader checks them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .common import Item, Valid, mw, raw_item, raw_tens, valid_adder
from .quip import make_quip, make_quip_v2, quip_item
from .spqr import spqr_item, spqr_made, v2spqr
from .squeezellm import make_squeezellm, sq_item

SUFFIX = ".spqr.index.json"
METADATA = {"source.model": "conformance/split", "x.note": "copied verbatim into every part"}
DIRECTORY = None  # a ``files`` value: this name is a directory (holding README), not a file


@dataclass
class SplitVector:
    """One set: the files of its folder, the path a reader is given, and what it must report."""

    name: str
    description: str
    files: dict[str, bytes | None]          # path inside the folder -> bytes (DIRECTORY: a directory)
    open: str                               # the index, or the first part, inside the folder
    valid: Valid | None = None              # valid sets: every tensor with its expected decode
    error: str | None = None                # invalid sets: the code a reader must report
    accept: list[str] = field(default_factory=list)


def part_file(name: str, i: int, n: int) -> str:
    return f"{name}-{i:05d}-of-{n:05d}.spqr"


def sha256_hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def index_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def make_set(groups: list[list[mw.Tens]], name: str = "model", metadata: Any = None,
             blobs: dict[int, bytes] | None = None) -> tuple[dict[str, bytes | None], dict[str, Any]]:
    """Parts (one per group, every part with the same metadata) and the index document describing them.

    ``blobs`` replaces the bytes of some parts (by position) after layout; the index describes the bytes
    actually written, so such a part passes the size and SHA-256 checks and fails only what it breaks.
    """
    n = len(groups)
    files: dict[str, bytes | None] = {}
    entries, where = [], {}
    for i, ts in enumerate(groups):
        blob = (blobs or {}).get(i) or mw.build(ts, METADATA if metadata is None else metadata)
        fname = part_file(name, i + 1, n)
        files[fname] = blob
        entries.append({"file": fname, "sha256": sha256_hex(blob), "bytes": len(blob)})
        where.update({t.name: i for t in ts})
    return files, {"format": "spqrfmt-split", "version": 1, "parts": entries, "tensors": where}


# ---------------------------------------------------------------- valid sets


def valid() -> list[SplitVector]:
    out: list[SplitVector] = []

    def add(name: str, desc: str, groups: list[list[Item]], *, by_first_part: bool = False,
            extra: Callable[[dict[str, Any]], None] | None = None) -> None:
        vs: list[Valid] = []
        valid_adder(vs)(name, desc, [it for g in groups for it in g])
        files, doc = make_set([[t for t, _, _ in g] for g in groups])
        if extra:
            extra(doc)
        files["model" + SUFFIX] = index_bytes(doc)
        out.append(SplitVector(name, desc, files, "model" + SUFFIX, valid=vs[0]))
        if by_first_part:
            out.append(SplitVector(name, desc + "; opened by its first part, which names the "
                                   "index beside it", files, part_file("model", 1, len(groups)), valid=vs[0]))

    add("two_parts", "2 parts: raw f16 + spqr v1 + squeezellm in part 1, quip v1 (with bias) + raw f32 in part 2, "
        "the same metadata in both",
        [[raw_item("embed", "f16", [6, 4], seed="split.embed"),
          spqr_made("spqr.w", "split.s", 4, 12, 3, 4, sb=3, zb=3, beta2=2, perm=True),
          sq_item("sq.w", make_squeezellm("split.q", 4, 12, 3, bias="f16"))],
         [quip_item("quip.w", make_quip("split.p", 4, 12, 2, 2, 2, bias="f32")),
          raw_item("norm", "f32", [4], seed="split.norm")]], by_first_part=True)
    add("three_parts", "3 parts: spqr v2 | quip v2 (E8P12) + an unknown codec | raw bf16; the unknown-codec "
        "tensor reports UNKNOWN_CODEC (SPEC §10 stage 5 stays per tensor in a set) and the others decode",
        [[spqr_item("spqr.v2", v2spqr("split.s2", 4, 12, 3, 4, "f16", "add", sb=3, zb=3, beta2=2))],
         [make_quip_v2("split.p2", 4, 16, 2, 2, bias="f16").entry("quip.v2"),
          (mw.Tens("future", [4, 4], "f16", "x-future-codec", {"k": 1}, [mw.Sec("blob", "u8", [5], b"12345")]),
           "UNKNOWN_CODEC", None)],
         [raw_item("head", "bf16", [3, 4], seed="split.head")]], by_first_part=True)

    def unknown_keys(doc: dict[str, Any]) -> None:
        doc["x.writer"] = {"note": "ignored"}
        doc["parts"][0]["x.mtime"] = 0

    add("one_part", "a set of 1 part, opened by its index (a 1-part set's part given alone is a single file); "
        "unknown index keys at the top and in a part entry are ignored",
        [[raw_item("only", "i32", [2, 3], seed="split.only"), raw_item("empty", "f32", [0])]], extra=unknown_keys)
    return out


# ---------------------------------------------------------------- invalid sets


def _groups() -> list[list[mw.Tens]]:
    """The small 3-part set every invalid vector starts from: a | b c | d (raw tensors)."""
    return [[raw_tens(n, "f32", [2, 4], seed=f"split.{n}")[0] for n in names] for names in (["a"], ["b", "c"], ["d"])]


def _latin1(b: bytes | None) -> bytes:
    assert b is not None
    return b.decode("utf-8").encode("latin-1")


def _with_raw_key(b: bytes | None, member: bytes) -> bytes:
    """The index text with ``member`` (JSON text the generator's encoder cannot write) as its first key."""
    assert b is not None and b.startswith(b"{\n")
    return b"{\n " + member + b",\n" + b[2:]


def _with_tensor_key(b: bytes | None, member: bytes) -> bytes:
    """The index text with ``member`` as the first key of its ``tensors`` object."""
    assert b is not None and b.count(b'"tensors": {\n') == 1
    return b.replace(b'"tensors": {\n', b'"tensors": {\n  ' + member + b",\n")


def _bad_magic(ts: list[mw.Tens]) -> bytes:
    return mw.build(ts, METADATA, spoil=mw.Spoil(magic=b"SPQRFMT\x01"))


def invalid() -> list[SplitVector]:
    out: list[SplitVector] = []
    index = "model" + SUFFIX
    first = part_file("model", 1, 3)

    def add(name: str, desc: str, error: str = "BAD_SPLIT", *, edit: Callable[[dict[str, Any]], Any] | None = None,
            files: Callable[[dict[str, bytes | None]], Any] | None = None, raw_index: bytes | None = None,
            open_: str = index, groups: list[list[mw.Tens]] | None = None,
            blobs: dict[int, bytes] | None = None) -> None:
        fs, doc = make_set(groups or _groups(), blobs=blobs)
        if edit:
            edit(doc)
        fs[index] = index_bytes(doc) if raw_index is None else raw_index
        if files:
            files(fs)
        out.append(SplitVector(name, desc, fs, open_, error=error, accept=[error]))

    def put(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda doc: doc.__setitem__(key, value)

    def part(i: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda doc: doc["parts"][i].__setitem__(key, value)

    def drop(name: str) -> Callable[[dict[str, bytes | None]], None]:
        return lambda fs: fs.pop(name)

    # the index itself
    add("index_missing", "the first part is given and the index beside it is absent", files=drop(index),
        open_=first)
    add("index_not_regular", "the index path is a directory", files=lambda fs: fs.__setitem__(index, DIRECTORY))
    add("index_not_json", "the index is not JSON", raw_index=b'{"format": "spqrfmt-split", "version": 1,\n')
    add("index_not_utf8", "the index is JSON text in Latin-1 (a byte 0xE9 inside a string), not UTF-8",
        edit=put("x.note", "caf\u00e9"), files=lambda fs: fs.__setitem__(index, _latin1(fs[index])))
    add("index_nan", "the index has an ignored key whose value is NaN, which is not JSON",
        files=lambda fs: fs.__setitem__(index, _with_raw_key(fs[index], b'"x.note": NaN')))
    add("index_repeated_key", "\"tensors\" names b twice, first with part index 2, then with 1 (where b is): "
        "JSON leaves a repeated key open, so §12 rejects it (a last-wins reader would accept the set)",
        files=lambda fs: fs.__setitem__(index, _with_tensor_key(fs[index], b'"b": 2')))
    add("index_not_object", "the index is a JSON array", raw_index=b"[]\n")
    add("index_wrong_format", "\"format\" is \"spqrfmt-splits\"", edit=put("format", "spqrfmt-splits"))
    add("index_unknown_version", "\"version\" is 2", edit=put("version", 2))
    add("index_version_true", "\"version\" is the JSON literal true, not the number 1", edit=put("version", True))
    add("index_version_float", "\"version\" is 1.0: the index's numbers are JSON integers (no fraction or "
        "exponent)", edit=put("version", 1.0))
    add("parts_empty", "\"parts\" is an empty array (a set has 1 to 99999 parts)", edit=put("parts", []))

    # a part's file name
    def move_to_sub(fs: dict[str, bytes | None]) -> None:
        fs["sub/" + part_file("model", 2, 3)] = fs.pop(part_file("model", 2, 3))

    add("part_file_separator", "part 2's \"file\" is \"sub/model-00002-of-00003.spqr\" (the file exists there: a "
        "part is always beside its index, a reader must not follow the path)",
        edit=part(1, "file", "sub/" + part_file("model", 2, 3)), files=move_to_sub)
    add("part_file_backslash", "part 2's \"file\" contains a backslash",
        edit=part(1, "file", "sub\\" + part_file("model", 2, 3)), files=drop(part_file("model", 2, 3)))
    add("part_file_dotdot", "part 2's \"file\" is \"..\"", edit=part(1, "file", ".."),
        files=drop(part_file("model", 2, 3)))
    add("part_file_empty", "part 2's \"file\" is \"\"", edit=part(1, "file", ""), files=drop(part_file("model", 2, 3)))

    def listed_twice(doc: dict[str, Any]) -> None:
        doc["parts"].insert(2, dict(doc["parts"][1]))
        doc["tensors"]["d"] = 3

    add("part_listed_twice", "part 2 is listed twice (entries 1 and 2, same file, size and SHA-256): a reader "
        "that read it twice would see b and c in two parts, but the index is already invalid", edit=listed_twice)
    add("part_sha256_uppercase", "part 1's \"sha256\" is its correct digest in uppercase hex (the index holds "
        "lowercase hex)", edit=lambda doc: doc["parts"][0].__setitem__("sha256", doc["parts"][0]["sha256"].upper()))
    add("part_bytes_string", "part 1's \"bytes\" is its correct size as a JSON string",
        edit=lambda doc: doc["parts"][0].__setitem__("bytes", str(doc["parts"][0]["bytes"])))

    # the tensor map
    add("part_index_out_of_range", "\"tensors\" places d in part index 3 of a 3-part set",
        edit=lambda doc: doc["tensors"].__setitem__("d", 3))
    add("part_index_negative", "\"tensors\" places d in part index -1 (not the last part)",
        edit=lambda doc: doc["tensors"].__setitem__("d", -1))
    add("part_index_float", "\"tensors\" places b in part 1.0 (b is in part index 1: not a JSON integer)",
        edit=lambda doc: doc["tensors"].__setitem__("b", 1.0))
    add("part_index_true", "\"tensors\" places b in part true, not the number 1 (b is in part index 1: a reader taking "
        "true for 1 would accept the set)",
        edit=lambda doc: doc["tensors"].__setitem__("b", True))

    # the part files
    add("part_missing", "part 2 of 3 is absent", files=drop(part_file("model", 2, 3)))
    add("part_not_regular", "part 2 is a directory", files=lambda fs: fs.__setitem__(part_file("model", 2, 3),
                                                                                     DIRECTORY))
    add("part_size_mismatch", "the index's \"bytes\" for part 3 is one more than its size (SHA-256 as written)",
        edit=lambda doc: doc["parts"][2].__setitem__("bytes", doc["parts"][2]["bytes"] + 1))

    def other_d() -> bytes:  # a valid part of the same size holding different values for d
        t = raw_tens("d", "f32", [2, 4], seed="split.d.changed")[0]
        return mw.build([t], METADATA)

    def swap_part3(fs: dict[str, bytes | None]) -> None:
        fs[part_file("model", 3, 3)] = other_d()

    add("part_sha256_mismatch", "part 3 was replaced by another valid file of the same size (d's values and CRC "
        "differ): only the SHA-256 catches it", files=swap_part3)
    add("part_bad_magic", "part 2 has a wrong magic (SPEC §10 stage 1); the index's size and SHA-256 describe the "
        "bad bytes", "BAD_MAGIC", blobs={1: _bad_magic(_groups()[1])})
    add("part_header_checksum", "part 3's header CRC-32 is wrong (SPEC §10 stage 2)", "HEADER_CHECKSUM",
        blobs={2: mw.build(_groups()[2], METADATA, spoil=mw.Spoil(header_crc=0))})

    # tensors against the index
    def dup(where: int) -> tuple[list[list[mw.Tens]], Callable[[dict[str, Any]], None]]:
        g = _groups()
        g[2].append(raw_tens("b", "f32", [2, 4], seed="split.b")[0])
        return g, lambda doc: doc["tensors"].__setitem__("b", where)

    g, e = dup(1)
    add("tensor_in_two_parts", "tensor b is in parts 2 and 3, the index places it in part 2", "DUPLICATE_NAME",
        groups=g, edit=e)
    g, e = dup(2)
    add("tensor_in_two_parts_index_later", "tensor b is in parts 2 and 3, the index places it in part 3 (the "
        "copy in part 2 is also misplaced, but DUPLICATE_NAME comes first in §12's order)", "DUPLICATE_NAME",
        groups=g, edit=e)
    add("tensor_elsewhere", "part 2 holds c, the index places c in part 3",
        edit=lambda doc: doc["tensors"].__setitem__("c", 2))
    add("tensor_not_in_index", "part 2 holds c, the index does not list c", edit=lambda doc: doc["tensors"].pop("c"))
    add("tensor_in_no_part", "the index places a tensor e in part 2, no part holds it",
        edit=lambda doc: doc["tensors"].__setitem__("e", 1))

    # two defects: the order of §12's table decides the code
    add("order_part_missing_before_part_defect", "part 1 has a wrong magic (index describes its bytes) and part 3 "
        "is absent: the missing part comes first", blobs={0: _bad_magic(_groups()[0])},
        files=drop(part_file("model", 3, 3)))
    add("order_part_defect_before_placement", "part 1 holds a, the index places a in part 2, and part 3 has a wrong "
        "magic: the §10 defect of part 3 comes before the misplaced tensor of part 1",
        "BAD_MAGIC", edit=lambda doc: doc["tensors"].__setitem__("a", 1), blobs={2: _bad_magic(_groups()[2])})
    return out
