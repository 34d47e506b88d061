"""Container vectors (spec/SPEC.md): preamble, header, records, names, shapes, layouts, raw tensors, and files
that mix codecs and codec versions.

They are built on the smallest files that exercise a rule; several corrupt ``spqr.base_file`` (a raw
tensor beside an spqr tensor), and the mixed files take a tensor from every codec generator.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from .common import (
    RAW_NP,
    Invalid,
    Item,
    Valid,
    header_adder,
    header_blob,
    invalid_adder,
    mw,
    offset_of,
    raw_item,
    raw_tens,
    sec_of,
    tens_of,
    valid_adder,
    valid_header,
)
from .quip import make_quip, make_quip_v2, quip_item, quip_tens
from .spqr import base_file, edit_adder, make_spqr, spqr_item, spqr_made, spqr_tens, v2spqr
from .squeezellm import make_squeezellm, sq_item


def _empty_raw(name: str, dtype: str, shape: list[int]) -> Item:
    t = mw.Tens(name, shape, dtype, "raw", {}, [mw.Sec("data", dtype, shape, b"")])
    return t, np.zeros(shape, dtype=RAW_NP[dtype]), None


def _huge_empty(shape: list[int]) -> bytes:
    return mw.build([mw.Tens("z", shape, "f32", "raw", {}, [mw.Sec("data", "f32", shape, b"")])])


# ---------------------------------------------------------------- vectors (in the manifest's order, see generate.py)


def valid_files() -> list[Valid]:
    """The empty file, every raw dtype and raw shapes."""
    out: list[Valid] = []
    add = valid_adder(out)
    add("empty", "no tensors, empty metadata: the smallest valid file", [])
    add("raw_all_dtypes", "one raw tensor of each of the 13 element types (floats with NaN/inf/-0/subnormal)",
        [raw_item(f"t.{d}", d, [3, 5]) for d in RAW_NP])
    add("raw_shapes", "raw shapes: scalar [], [0], [0,7], [1], 3-D, and MAX_NDIM=8 dims",
        [raw_item("scalar", "f32", []), raw_item("empty1", "f16", [0]), raw_item("empty2", "i32", [0, 7]),
         raw_item("one", "bf16", [1]), raw_item("cube", "i16", [2, 3, 4]),
         raw_item("eight", "u8", [1, 2, 1, 2, 1, 2, 1, 2])])
    return out


def valid_layout() -> list[Valid]:
    """Section layouts, unknown keys and codecs, wide ints, names, nesting."""
    out: list[Valid] = []
    add = valid_adder(out)
    mixed = [raw_item("embed", "f16", [10, 8]),
             spqr_made("layer.0.q", "mx0", 8, 10, 3, 4, sb=3, zb=3, beta2=3, perm=True),
             raw_item("norm", "f32", [8]), spqr_made("layer.0.k", "mx1", 4, 10, 2, 5, bias="f16"),
             raw_item("flags", "bool", [5])]
    add("layout_reverse", "sections written in reverse header order", mixed, layout=mw.Layout(order="reverse"))
    add("layout_interleave_gaps", "sections interleaved across tensors, 4096-byte lead, 1000-byte gaps, 777 tail",
        mixed, layout=mw.Layout(order="interleave", gap=1000, lead=4096, tail=777))
    add("layout_max_padding", "63 bytes of header padding, sections with length 1 mod 64 (63 bytes padding each)",
        [raw_item("a", "u8", [65]), raw_item("b", "i8", [129]), raw_item("c", "u8", [1])],
        layout=mw.Layout(max_header_pad=True))
    add("layout_empty_sections_end", "zero-length sections placed at offset == data_length",
        [spqr_made("w", "emptyend", 4, 12, 2, 4, outliers="none"), raw_item("z", "f32", [0, 4])],
        layout=mw.Layout(empty_at="end"))
    add("layout_empty_sections_shared", "zero-length sections at offset 0, inside another section (legal)",
        [spqr_made("w", "emptyzero", 4, 12, 2, 4, outliers="none"), raw_item("z", "f32", [0])],
        layout=mw.Layout(empty_at="zero"))
    add("layout_nonzero_padding", "all padding bytes (header pad, gaps) are 0xA5: writers must not, readers ignore",
        mixed[:3], layout=mw.Layout(pad_byte=0xA5, gap=100))
    add("unknown_keys", "unknown top-level, tensor, section and params keys, rich metadata (nested, bin, "
        "float32/64, nil, bool, negative and u64 ints)",
        [raw_item("r", "i64", [3], extra={"x.future": {"a": [1, 2]}}),
         spqr_made("w", "unk", 4, 20, 3, 16, extra_params={"x.hint": [1, "two"]}, tkw={"extra": {"x.note": "hi"}})],
        extra_top={"x.top": {"nested": [{"deep": None}]}},
        metadata={"spqrfmt.writer": "miniwriter", "bin": b"\x00\xff", "f64": 1.5, "f32": mw.F32(0.25),
                  "nil": None, "t": True, "neg": -123456789, "big": (1 << 64) - 1,
                  "nest": {"a": {"b": {"c": [1, [2, [3]]]}}}},
        section_extra={"x.sec": 7})
    add("minor_1_7", "minor version 7 with unknown keys: a 1.0 reader must accept it",
        [raw_item("r", "f32", [4]), spqr_made("w", "minor", 3, 8, 2, 8)], minor=7, extra_top={"x.added_in_1_7": [1]})
    add("unknown_codec_alongside", "an unknown codec and an unsupported codec_version beside valid tensors: "
        "the file opens, those two report UNKNOWN_CODEC / UNSUPPORTED_CODEC_VERSION, the others decode",
        [raw_item("before", "f32", [4]),
         (mw.Tens("future", [4, 4], "f16", "x-future-codec", {"k": 1},
                  [mw.Sec("blob", "u8", [13], bytes(range(13))), mw.Sec("more", "f32", [0], b"")]),
          "UNKNOWN_CODEC", None),
         (spqr_tens("spqr_v99", make_spqr("v2", 3, 8, 2, 8), codec_version=99), "UNSUPPORTED_CODEC_VERSION",
          None),
         spqr_made("after", "after", 3, 8, 2, 8)])
    add("wide_int_encodings", "header ints encoded non-minimally (u64/i64 for small values): legal msgpack",
        [raw_item("r", "u16", [2, 2])], wide_ints=True)
    add("names_unicode_and_long", "UTF-8 names (multi-byte) and a name of exactly 1024 bytes",
        [raw_item("ß/тензор/张量.weight", "f32", [2]), raw_item("n" * 1024, "u8", [1])])

    # ---- spec rules of SPEC §3/§4 made explicit (valid side)
    nest: Any = 0
    for _ in range(30):  # top map (1) + metadata map (2) + 30 arrays = depth 32 = MAX_NESTING
        nest = [nest]
    add("header_nesting_32", "containers nested exactly MAX_NESTING = 32 deep (the top-level map counts as 1)",
        [raw_item("r", "u8", [1])], metadata={"d": nest})
    add("names_not_normalized", "names compared as code points, no Unicode normalization or case folding: "
        "NFC 'é', NFD 'e'+U+0301, 'W' and 'w' are four distinct tensors",
        [raw_item("\u00e9", "f32", [1]), raw_item("e\u0301", "f32", [1]), raw_item("W", "u8", [1]),
         raw_item("w", "u8", [1])])
    return out


def valid_mixed_codecs() -> list[Valid]:
    """Every codec in one file."""
    out: list[Valid] = []
    add = valid_adder(out)
    add("mixed_codecs", "raw, spqr, squeezellm and quip tensors in one file, sections interleaved with gaps",
        [raw_item("embed", "f16", [6, 4]), spqr_made("spqr.w", "mixs", 4, 12, 3, 4, sb=3, zb=3, beta2=2, perm=True),
         sq_item("sq.w", make_squeezellm("mixq", 4, 12, 3, bias="f16")),
         quip_item("quip.w", make_quip("mixp", 4, 12, 2, 2, 2, bias="f32")), raw_item("norm", "f32", [4])],
        layout=mw.Layout(order="interleave", gap=64, lead=128))
    return out


def valid_versions() -> list[Valid]:
    """Codec versions 1, 2 and an unsupported 3 side by side."""
    out: list[Valid] = []
    add = valid_adder(out)
    future = make_quip_v2("q2v3", 2, 8, 3, 1)
    quip_v1 = make_quip("q2v1", 2, 8, 2, 3, 1)
    later = make_spqr("s2v3", 3, 8, 2, 8)
    later.version, later.arith, later.outlier_op = 2, "f16", "add"
    add("codec_versions_alongside", "quip and spqr tensors of codec_version 3 (UNSUPPORTED_CODEC_VERSION each) "
        "between version-1 and version-2 tensors of both codecs, which decode",
        [spqr_item("spqr.v1", make_spqr("s2v1", 3, 8, 2, 8)),
         (future.tens("quip.v3", codec_version=3), "UNSUPPORTED_CODEC_VERSION", None),
         spqr_item("spqr.v2", later),
         (spqr_tens("spqr.v3", make_spqr("s2v3b", 3, 8, 2, 8), codec_version=3),
          "UNSUPPORTED_CODEC_VERSION", None),
         make_quip_v2("q2v2", 2, 8, 3, 1).entry("quip.v2"),
         (quip_tens("quip.v1", quip_v1), quip_v1.oracle(), None)])
    embed, embed_a = raw_tens("embed", "f16", [6, 4])
    mq1 = make_quip("mq1", 4, 16, 2, 2, 2)
    mixed = [(embed, embed_a, None),
             spqr_item("spqr.v1", make_spqr("mv1", 4, 12, 3, 4, sb=3, zb=3, beta2=2, perm=True)),
             spqr_item("spqr.v2", v2spqr("mv2", 4, 12, 3, 4, "f16", "add", sb=3, zb=3, beta2=2, perm=True)),
             (quip_tens("quip.v1", mq1), mq1.oracle(), None),
             make_quip_v2("mq2", 4, 16, 2, 2, su="f32", sv="i8", bias="f16").entry("quip.v2")]
    add("mixed_codec_versions", "spqr v1 + v2 and quip v1 + v2 tensors in one file, sections interleaved with gaps "
        "(a reader claiming only version 1 reports the v2 tensors as UNSUPPORTED_CODEC_VERSION)", mixed,
        layout=mw.Layout(order="interleave", gap=64, lead=128))
    return out


def valid_edges() -> list[Valid]:
    """Names counted in bytes, ignored raw params, zero-size shapes with huge dimensions."""
    out: list[Valid] = []
    add = valid_adder(out)
    add("names_non_ascii_1024_bytes", "names of exactly MAX_NAME_BYTES = 1024 UTF-8 bytes from 2-, 3- and 4-byte "
        "characters (512, 341 + 1 and 256 code points): the limit counts bytes",
        [raw_item("\u00e9" * 512, "u8", [1]), raw_item("\u5f20" * 341 + "x", "u8", [1]),
         raw_item("\U0001f600" * 256, "u8", [1])])
    raw_p, raw_a = raw_tens("r", "f32", [3])
    raw_p.params = {"bits": 4, "scale": 2.0, "codec": "spqr", "x": [1, {"y": None}]}
    add("raw_params_ignored", "a raw tensor with non-empty params (bits, scale, ...): raw defines none, so they "
        "are ignored and the data decodes as stored (SPEC §8, §4.2)", [(raw_p, raw_a, None)])
    add("raw_zero_size_huge_dims", "zero-size raw tensors with huge dimensions: [0, 2^40] f64, [2^40, 0] i8, "
        "[0, 2^20, 2^20] f32, [7, 0, 2^37] u16 (the non-zero entries multiply to <= MAX_ELEMENTS, SPEC §4)",
        [_empty_raw("a", "f64", [0, 1 << 40]), _empty_raw("b", "i8", [1 << 40, 0]),
         _empty_raw("c", "f32", [0, 1 << 20, 1 << 20]), _empty_raw("d", "u16", [7, 0, 1 << 37])])
    return out


def invalid_file() -> list[Invalid]:
    """Preamble, sizes, msgpack header defects, record types, names, shapes, sections."""
    out: list[Invalid] = []
    add = invalid_adder(out)
    hdr = header_adder(add)
    rec = edit_adder(add)
    ts, _ = base_file()
    good = mw.build(ts)
    _, hl = good[:16], int.from_bytes(good[16:24], "little")
    # preamble / size
    add("truncated_empty", "0-byte file", b"", "TRUNCATED")
    add("truncated_preamble", "16 bytes: shorter than the preamble", good[:16], "TRUNCATED")
    add("truncated_header", "cut in the middle of the header", good[:40], "TRUNCATED")
    add("truncated_data", "last data byte missing", good[:-1], "TRUNCATED")
    add("bad_magic", "magic 'SPQRFMT\\x01'", mw.build(ts, spoil=mw.Spoil(magic=b"SPQRFMT\x01")), "BAD_MAGIC")
    add("bad_magic_lowercase", "magic 'spqrfmt\\0'", mw.build(ts, spoil=mw.Spoil(magic=b"spqrfmt\x00")), "BAD_MAGIC")
    add("version_major_2", "major = 2", mw.build(ts, spoil=mw.Spoil(major=2)), "UNSUPPORTED_VERSION")
    add("version_major_0", "major = 0", mw.build(ts, spoil=mw.Spoil(major=0)), "UNSUPPORTED_VERSION")
    add("header_length_zero", "header_length = 0", mw.build(ts, spoil=mw.Spoil(header_length=0)), "HEADER_TOO_LARGE")
    add("header_length_over_max", "header_length = 64 MiB + 1 (file is small)",
        mw.build(ts, spoil=mw.Spoil(header_length=(64 << 20) + 1)), "HEADER_TOO_LARGE")
    add("header_length_huge", "header_length = 2^64 - 1 (must not allocate or overflow)",
        mw.build(ts, spoil=mw.Spoil(header_length=(1 << 64) - 1)), "HEADER_TOO_LARGE")
    add("data_length_huge", "data_length = 2^64 - 1 (D + L overflows 64-bit arithmetic)",
        mw.build(ts, spoil=mw.Spoil(data_length=(1 << 64) - 1)), "TRUNCATED")
    add("header_length_past_eof", "header_length larger than the file but under the limit",
        mw.build(ts, spoil=mw.Spoil(header_length=hl + 4096)), "TRUNCATED")
    add("trailing_byte", "one extra byte after D + L", good + b"\x00", "TRAILING_DATA")
    add("trailing_block", "a whole extra 64-byte block", good + bytes(64), "TRAILING_DATA")
    add("header_checksum", "header_crc off by one", mw.build(ts, spoil=mw.Spoil(header_crc=(
        int.from_bytes(good[12:16], "little") ^ 1))), "HEADER_CHECKSUM")

    # msgpack-level header defects (CRC is valid, so BAD_HEADER is the only applicable code)
    vh = mw.packb(valid_header())
    hdr("hdr_not_msgpack", "header is the reserved byte 0xC1", b"\xc1")
    hdr("hdr_trailing_bytes", "a valid map followed by one more byte", vh + b"\xc0")
    hdr("hdr_truncated_msgpack", "map header promises 2 pairs, only 1 present", vh[:-1] + b"")
    hdr("hdr_not_a_map", "header is an array", mw.packb([[], {}]))
    hdr("hdr_ext_in_metadata", "ext type (code 5) as a metadata value",
        mw.packb({"tensors": [], "metadata": {"x": mw.Ext(5, b"abcd")}}))
    hdr("hdr_timestamp_ext", "msgpack timestamp ext (-1) in metadata",
        mw.packb({"tensors": [], "metadata": {"t": mw.Ext(-1, b"\x00\x00\x00\x01")}}))
    hdr("hdr_ext8_top", "ext8 with 3-byte payload as an unknown top-level value",
        mw.packb({"tensors": [], "metadata": {}, "x": mw.Ext(1, b"abc")}))
    hdr("hdr_duplicate_top_key", "the key 'tensors' appears twice",
        mw.packb(mw.Pairs([("tensors", []), ("metadata", {}), ("tensors", [])])))
    hdr("hdr_duplicate_metadata_key", "metadata has the same key twice",
        mw.packb({"tensors": [], "metadata": mw.Pairs([("a", 1), ("a", 2)])}))
    hdr("hdr_int_key", "metadata map with an int key", mw.packb({"tensors": [], "metadata": mw.Pairs([(1, 2)])}))
    hdr("hdr_bin_key", "top-level map with a bin key", mw.packb(mw.Pairs([("tensors", []), ("metadata", {}),
                                                                          (b"k", 1)])))
    hdr("hdr_invalid_utf8", "a str with invalid UTF-8 as metadata value",
        mw.packb({"tensors": [], "metadata": {"s": mw.BadStr(b"\xff\xfe")}}))
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    hdr("hdr_nesting_40", "40 nested arrays in metadata (> MAX_NESTING = 32)",
        mw.packb({"tensors": [], "metadata": {"d": deep}}))
    deep_b = b"\x91" * 100000 + b"\xc0"
    hdr("hdr_nesting_100k", "100000 nested arrays: a recursive parser must not overflow its stack",
        mw.packb({"tensors": [], "metadata": {"d": mw.Raw(deep_b)}}))
    hdr("hdr_container_len_huge", "array32 declaring 2^32-1 items with no items present",
        mw.packb({"tensors": [], "metadata": {"a": mw.Raw(b"\xdd\xff\xff\xff\xff")}}))
    hdr("hdr_container_len_over_limit", "map32 declaring MAX_CONTAINER_LEN + 1 pairs",
        mw.packb({"tensors": [], "metadata": {"a": mw.Raw(b"\xdf\x01\x00\x00\x01")}}))
    hdr("hdr_str_len_huge", "str32 declaring 2^32-1 bytes",
        mw.packb({"tensors": [], "metadata": {"a": mw.Raw(b"\xdb\xff\xff\xff\xff")}}))
    hdr("hdr_missing_tensors", "no 'tensors' key", mw.packb({"metadata": {}}))
    hdr("hdr_missing_metadata", "no 'metadata' key", mw.packb({"tensors": []}))
    hdr("hdr_tensors_not_array", "'tensors' is a map", mw.packb({"tensors": {}, "metadata": {}}))
    add("metadata_not_map", "'metadata' is an array",
        header_blob({"tensors": [], "metadata": [1, 2]}), "BAD_METADATA")
    add("metadata_nil", "'metadata' is nil", header_blob({"tensors": [], "metadata": None}), "BAD_METADATA")

    # tensor record types
    rec("rec_missing_sections", "tensor record without 'sections'",
        lambda ts: setattr(tens_of(ts, "w"), "drop", ("sections",)), "BAD_HEADER")
    rec("rec_missing_codec_version", "tensor record without 'codec_version'",
        lambda ts: setattr(tens_of(ts, "norm"), "drop", ("codec_version",)), "BAD_HEADER")
    add("rec_not_map", "a tensor record that is an int", header_blob({"tensors": [5], "metadata": {}}), "BAD_HEADER")
    rec("rec_name_int", "tensor name is an int", lambda ts: tens_of(ts, "norm").set.update(name=7), "BAD_HEADER")
    rec("rec_codec_version_str", "codec_version is a str", lambda ts: tens_of(ts, "w").set.update(codec_version="1"),
        "BAD_HEADER")
    rec("rec_codec_version_zero", "codec_version 0 (spec: int >= 1; a malformed record, not a future version)",
        lambda ts: tens_of(ts, "w").set.update(codec_version=0), "BAD_HEADER")
    rec("rec_codec_version_bool", "codec_version is msgpack true (bool is not int)",
        lambda ts: tens_of(ts, "w").set.update(codec_version=True), "BAD_HEADER")
    rec("rec_offset_float", "section offset is a float 0.0",
        lambda ts: sec_of(ts, "norm", "data").set.update(offset=0.0), "BAD_HEADER")
    rec("rec_section_missing_crc", "section record without crc32",
        lambda ts: setattr(sec_of(ts, "norm", "data"), "drop", ("crc32",)), "BAD_HEADER")
    rec("rec_crc_out_of_range", "section crc32 = 2^32 (out of range)",
        lambda ts: sec_of(ts, "norm", "data").set.update(crc32=1 << 32), "BAD_HEADER")
    rec("rec_params_not_map", "spqr params is an array",
        lambda ts: tens_of(ts, "w").set.update(params=[3]), "BAD_HEADER")
    rec("rec_sections_not_map", "sections is an array",
        lambda ts: tens_of(ts, "norm").set.update(sections=[]), "BAD_HEADER")
    # names
    rec("name_empty", "empty tensor name", lambda ts: tens_of(ts, "norm").set.update(name=""), "BAD_NAME")
    rec("name_nul", "tensor name containing NUL", lambda ts: tens_of(ts, "norm").set.update(name="a\x00b"), "BAD_NAME")
    rec("name_1025_bytes", "tensor name of 1025 ASCII bytes",
        lambda ts: tens_of(ts, "norm").set.update(name="n" * 1025), "BAD_NAME")
    rec("name_duplicate", "two tensors named 'w'", lambda ts: tens_of(ts, "norm").set.update(name="w"),
        "DUPLICATE_NAME")
    # dtypes / shapes
    rec("dtype_tensor_unknown", "tensor dtype 'f8e4m3'", lambda ts: tens_of(ts, "norm").set.update(dtype="f8e4m3"),
        "BAD_DTYPE")
    rec("dtype_section_unknown", "section dtype 'float32'",
        lambda ts: sec_of(ts, "norm", "data").set.update(dtype="float32"), "BAD_DTYPE")
    rec("shape_negative", "tensor shape [-4]", lambda ts: tens_of(ts, "norm").set.update(shape=[-4]), "BAD_SHAPE")
    rec("shape_9_dims", "tensor shape with 9 dims", lambda ts: tens_of(ts, "norm").set.update(shape=[1] * 8 + [4]),
        "BAD_SHAPE")
    rec("shape_float_entry", "section shape [4.0]",
        lambda ts: sec_of(ts, "norm", "data").set.update(shape=[4.0]), "BAD_SHAPE")
    rec("shape_not_array", "tensor shape is an int", lambda ts: tens_of(ts, "norm").set.update(shape=4), "BAD_HEADER")
    rec("shape_overflow_tensor", "tensor shape [2^21, 2^20] = 2^41 elements",
        lambda ts: tens_of(ts, "norm").set.update(shape=[1 << 21, 1 << 20]), "SHAPE_OVERFLOW")
    rec("shape_overflow_u64", "section shape [2^64-1, 2^64-1] (product overflows any fixed-width int)",
        lambda ts: sec_of(ts, "norm", "data").set.update(shape=[(1 << 64) - 1, (1 << 64) - 1]), "SHAPE_OVERFLOW",
        ("SECTION_LENGTH_MISMATCH",))
    rec("shape_overflow_wrap", "section shape [2^32, 2^32, 2] whose product wraps to 0 in u64",
        lambda ts: sec_of(ts, "norm", "data").set.update(shape=[1 << 32, 1 << 32, 4], length=0), "SHAPE_OVERFLOW",
        ("SECTION_LENGTH_MISMATCH",))
    # section geometry
    rec("section_length_mismatch", "section length one itemsize short",
        lambda ts: sec_of(ts, "norm", "data").set.update(length=12), "SECTION_LENGTH_MISMATCH")
    rec("section_length_negative", "section length -16",
        lambda ts: sec_of(ts, "norm", "data").set.update(length=-16), "SECTION_LENGTH_MISMATCH")
    rec("section_misaligned", "section offset 32 (not a multiple of 64)",
        lambda ts: sec_of(ts, "w", "perm").set.update(offset=32), "SECTION_MISALIGNED", ("SECTION_OVERLAP",))
    rec("section_out_of_bounds", "section ends past data_length",
        lambda ts: sec_of(ts, "w", "bias").set.update(offset=1 << 20), "SECTION_OUT_OF_BOUNDS")
    rec("section_negative_offset", "section offset -64",
        lambda ts: sec_of(ts, "norm", "data").set.update(offset=-64), "SECTION_OUT_OF_BOUNDS")
    rec("section_offset_huge", "section offset 2^64-64 (offset + length overflows u64)",
        lambda ts: sec_of(ts, "norm", "data").set.update(offset=(1 << 64) - 64), "SECTION_OUT_OF_BOUNDS")
    rec("section_overlap_tensors", "a section of 'w' points at the bytes of 'norm'",
        lambda ts: sec_of(ts, "w", "bias").set.update(offset=0), "SECTION_OVERLAP")
    rec("section_overlap_same_tensor", "'scale_zero' and 'scale_scale' of one tensor share bytes",
        lambda ts: sec_of(ts, "w", "scale_zero").set.update(offset=offset_of(ts, "w", "scale_scale")),
        "SECTION_OVERLAP")
    return out


def invalid_types() -> list[Invalid]:
    """SPEC §3/§4 type, encoding and zero-length rules (one code each, SPEC §10)."""
    out: list[Invalid] = []
    add = invalid_adder(out)
    hdr = header_adder(add)
    rec = edit_adder(add)
    # ---- SPEC §3/§4 type, encoding and zero-length rules (one code each, SPEC §10 precedence)
    deep33: Any = 0
    for _ in range(31):  # top map (1) + metadata map (2) + 31 arrays = depth 33
        deep33 = [deep33]
    hdr("hdr_nesting_33", "containers nested MAX_NESTING + 1 = 33 deep (the top-level map counts as 1)",
        mw.packb({"tensors": [], "metadata": {"d": deep33}}))
    hdr("hdr_invalid_utf8_key", "a metadata key with invalid UTF-8",
        mw.packb({"tensors": [], "metadata": mw.Pairs([(mw.BadStr(b"k\xc3"), 1)])}))
    rec("name_overlong_utf8", "tensor name with an overlong UTF-8 NUL (C0 80): BAD_HEADER, not BAD_NAME",
        lambda ts: tens_of(ts, "norm").set.update(name=mw.BadStr(b"a\xc0\x80b")), "BAD_HEADER")
    rec("name_surrogate_utf8", "tensor name with an encoded surrogate U+D800 (ED A0 80): not valid UTF-8",
        lambda ts: tens_of(ts, "norm").set.update(name=mw.BadStr(b"w\xed\xa0\x80")), "BAD_HEADER")
    rec("name_nfd_nfc_duplicate", "two tensors named by the same code points 'e'+U+0301 (byte-equal names)",
        lambda ts: (tens_of(ts, "norm").set.update(name="e\u0301"), tens_of(ts, "w").set.update(name="e\u0301")),
        "DUPLICATE_NAME")
    rec("shape_bool_entry", "tensor shape [true, 4]: a bool is not an int", lambda ts: tens_of(ts, "norm").set.update(
        shape=[True, 4]), "BAD_SHAPE")
    rec("rec_length_bool", "section length is msgpack true", lambda ts: sec_of(ts, "norm", "data").set.update(
        length=True), "BAD_HEADER")
    rec("rec_offset_float_integral", "section offset 64.0 (float, though integral)",
        lambda ts: sec_of(ts, "w", "bias").set.update(offset=float(offset_of(ts, "w", "bias"))), "BAD_HEADER")
    rec("rec_crc_negative", "section crc32 = -1", lambda ts: sec_of(ts, "norm", "data").set.update(crc32=-1),
        "BAD_HEADER")
    rec("rec_crc_float", "section crc32 as a float", lambda ts: sec_of(ts, "norm", "data").set.update(
        crc32=float(zlib.crc32(sec_of(ts, "norm", "data").data))), "BAD_HEADER")
    rec("rec_codec_version_negative", "codec_version -1", lambda ts: tens_of(ts, "norm").set.update(codec_version=-1),
        "BAD_HEADER")
    rec("rec_shape_nil", "tensor shape is nil", lambda ts: tens_of(ts, "norm").set.update(shape=None), "BAD_HEADER")
    rec("rec_dtype_int", "tensor dtype is an int", lambda ts: tens_of(ts, "norm").set.update(dtype=4), "BAD_HEADER")
    rec("empty_section_misaligned", "zero-length section at offset 32", lambda ts: ts.append(
        mw.Tens("e", [0], "f32", "raw", {}, [mw.Sec("data", "f32", [0], b"", set={"offset": 32})])),
        "SECTION_MISALIGNED")
    rec("empty_section_past_end", "zero-length section at an offset past data_length", lambda ts: ts.append(
        mw.Tens("e", [0], "f32", "raw", {}, [mw.Sec("data", "f32", [0], b"", set={"offset": 1 << 20})])),
        "SECTION_OUT_OF_BOUNDS")
    return out


def invalid_edges() -> list[Invalid]:
    """Zero-size shapes that overflow, names counted in bytes, a section record not a map."""
    out: list[Invalid] = []
    add = invalid_adder(out)
    for shape, why in (([0, 1 << 63], "0_2e63"), ([1 << 63, 0], "2e63_0"), ([0, 1 << 40, 1 << 40], "0_2e40_2e40"),
                       ([0, (1 << 40) + 1], "0_2e40p1"), ([(1 << 64) - 1, 0, 1], "u64max_0_1")):
        add(f"shape_zero_size_overflow_{why}", f"raw tensor and section shape {shape}: product 0, but the non-zero "
            "entries multiply to more than MAX_ELEMENTS (SHAPE_OVERFLOW whatever the order, SPEC §4)",
            _huge_empty(shape), "SHAPE_OVERFLOW")
    add("name_non_ascii_1026_bytes", "a name of 513 code points 'é' = 1026 UTF-8 bytes (> 1024: the limit counts "
        "bytes, not characters)", mw.build([raw_tens("\u00e9" * 513, "u8", [1])[0]]), "BAD_NAME")
    add("name_4byte_chars_1028_bytes", "a name of 257 four-byte characters = 1028 UTF-8 bytes (514 UTF-16 units)",
        mw.build([raw_tens("\U0001f600" * 257, "u8", [1])[0]]), "BAD_NAME")
    add("rec_section_not_map", "a section record that is an int (SPEC §3.1: BAD_HEADER)", header_blob(
        {"tensors": [{"name": "r", "shape": [1], "dtype": "f32", "codec": "raw", "codec_version": 1, "params": {},
                      "sections": {"data": 5}}], "metadata": {}}), "BAD_HEADER")
    return out
