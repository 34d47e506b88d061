"""The foreign-decoder command-line contract (spec/conformance.md §4), implemented on the refreader.

Why: CI drives this through a subprocess exactly as it would drive a decoder
written in another language, so the contract itself stays tested.

    python -m spqrfmt.conformance.refdecode_cli [--codecs raw,spqr] INPUT.spqr OUTPUT.safetensors

Exit 0: every tensor decoded (quantized -> F32, raw -> own dtype) into
OUTPUT; tensors with an unknown codec or codec version are left out and
named in ``__metadata__`` as ``spqr.error.<name>: <CODE>``. Exit 2: the file
is rejected; the first stderr line starts with the error code name.
``--codecs`` makes it behave like a reader that implements only those codecs,
each optionally in only some versions (``raw,spqr:1,quip``: the other codecs
become UNKNOWN_CODEC, spqr version 2 UNSUPPORTED_CODEC_VERSION), which is how
the suite tests partial claims.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import refreader  # type: ignore[no-redef]
    import safetensors_mini as st  # type: ignore[no-redef]
else:
    from . import refreader
    from . import safetensors_mini as st

SKIPPABLE = ("UNKNOWN_CODEC", "UNSUPPORTED_CODEC_VERSION")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 4 and args[0] == "--codecs":
        keep: dict[str, set[int] | None] = {}
        for item in filter(None, args[1].split(",")):
            cid, sep, ver = item.partition(":")
            if not sep:
                keep[cid] = None
            elif keep.get(cid, set()) is not None:
                keep.setdefault(cid, set()).add(int(ver))  # type: ignore[union-attr]
        for cid in list(refreader.CODECS):
            if cid not in keep:
                del refreader.CODECS[cid]
            elif keep[cid] is not None:
                codec = refreader.CODECS[cid]
                codec.versions = codec.versions & frozenset(keep[cid])  # type: ignore[arg-type]
        args = args[2:]
    if len(args) != 2:
        print("usage: refdecode_cli [--codecs LIST] INPUT.spqr OUTPUT.safetensors", file=sys.stderr)
        return 64
    src, dst = args
    tensors: dict[str, tuple[str, list[int], bytes]] = {}
    meta: dict[str, str] = {}
    try:
        f = refreader.open_file(src)
        for name, rec in f.tensors.items():
            try:
                arr = f.decode(name)
            except refreader.RefError as e:
                if e.code in SKIPPABLE:
                    meta[f"spqr.error.{name}"] = e.code
                    continue
                raise
            dtype = "f32" if rec.codec != "raw" else rec.dtype
            data = arr.astype("u1").tobytes() if dtype == "bool" else arr.tobytes()
            tensors[name] = (st.ST_DTYPE[dtype], list(arr.shape), data)
    except refreader.RefError as e:
        print(f"{e.code} {e}", file=sys.stderr)
        return 2
    st.write(dst, tensors, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
