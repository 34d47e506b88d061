"""What ``spqr inspect`` prints: a header-only summary of a file as text, Markdown or JSON.

Why one module: the three renderings show the same facts (version, metadata,
totals per codec, tensors, sections), computed once in :func:`summary`, and
every string that came from the file is made safe for a terminal (no escape
sequences) or for a Markdown table (no cell breaks) before it is printed.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

from .reader import SpqrFile, Tensor


def safe(v: Any) -> str:
    """Text fit for a terminal: control and other non-printable characters as escapes (no ANSI sequences)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(v))


def jsonable(v: Any) -> Any:
    """``v`` as strict JSON values: bytes as {"base64": ...}, non-finite floats as strings."""
    if isinstance(v, bytes):
        return {"base64": base64.b64encode(v).decode("ascii")}
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k if isinstance(k, str) else json.dumps(jsonable(k)): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if v is None or isinstance(v, (str, int, float)):
        return v
    return str(v)


def short(v: Any, width: int = 60) -> str:
    """One terminal-safe line of at most ``width`` characters; bytes as their length."""
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    s = v if isinstance(v, str) else json.dumps(jsonable(v))
    s = safe(s.replace("\n", " "))
    return s if len(s) <= width else s[: width - 3] + "..."


def selected(f: SpqrFile, pattern: str | None) -> list[Tensor]:
    """The tensors whose name matches ``pattern`` (re.search), all of them without one."""
    rx = re.compile(pattern) if pattern is not None else None
    return [t for t in f.tensors.values() if rx is None or rx.search(t.name)]


def codec_totals(tensors: list[Tensor]) -> dict[str, dict[str, Any]]:
    """``{codec: {tensors, params, bytes, bits_per_param}}`` in order of first appearance."""
    out: dict[str, dict[str, Any]] = {}
    for t in tensors:
        c = out.setdefault(t.codec, {"tensors": 0, "params": 0, "bytes": 0})
        c["tensors"] += 1
        c["params"] += t.numel
        c["bytes"] += t.nbytes
    for c in out.values():
        c["bits_per_param"] = round(8 * c["bytes"] / c["params"], 4) if c["params"] else 0.0
    return out


def summary(f: SpqrFile, pattern: str | None = None, tensors: bool = True) -> dict[str, Any]:
    """The JSON summary: totals over the selected tensors, every metadata value (bytes as base64),
    and unless ``tensors`` is False one record per selected tensor with its sections' CRC-32s."""
    ts = selected(f, pattern)
    params = sum(t.numel for t in ts)
    nbytes = sum(t.nbytes for t in ts)
    out: dict[str, Any] = {
        "version": list(f.version),
        "header_length": f.preamble.header_length,
        "data_length": f.preamble.data_length,
        "tensor_count": len(ts),
        "params": params,
        "bytes": nbytes,
        "bits_per_param": round(8 * nbytes / params, 4) if params else 0.0,
        "codecs": codec_totals(ts),
        "metadata": jsonable(f.metadata),
    }
    if pattern is not None:
        out["filter"] = pattern
    if tensors:
        out["tensors"] = [
            {"name": t.name, "codec": t.codec, "codec_version": t.codec_version, "dtype": t.dtype,
             "shape": list(t.shape), "params": jsonable(t.params), "bytes": t.nbytes,
             "bits_per_param": round(t.bits_per_param, 4),
             "sections": {r: {"dtype": s.dtype, "shape": list(s.shape), "offset": s.offset, "length": s.length,
                              "crc32": f"{s.crc32:08x}"} for r, s in t.record.sections.items()}}
            for t in ts
        ]
    return out


def render_text(f: SpqrFile, pattern: str | None = None, tensors: bool = True, sections: bool = False) -> str:
    """gguf-dump-style text: header line, totals, metadata, per-codec totals, one line per tensor."""
    s = summary(f, pattern, tensors=False)
    ts = selected(f, pattern)
    lines = [f"{safe(f.path)}: spqrfmt v{f.version[0]}.{f.version[1]}, header {f.preamble.header_length} bytes, "
             f"data {f.preamble.data_length} bytes",
             f"{len(ts)} tensors{_filtered(pattern)}, {s['params'] / 1e6:.2f}M params, {s['bytes'] / 2**20:.2f} MiB "
             f"stored, {s['bits_per_param']:.3f} bits/param overall", "", "metadata:"]
    lines += [f"  {safe(k):32s} {short(v)}" for k, v in f.metadata.items()]
    lines += ["", "codecs:"]
    lines += [f"  {safe(codec):12s} {c['tensors']:5d} tensors {c['params'] / 1e6:10.2f}M params "
              f"{c['bits_per_param']:7.3f} bits/param" for codec, c in s["codecs"].items()]
    if tensors:
        lines += ["", f"{'#':>4s}  {'name':56s} {'codec':8s} {'dtype':5s} {'shape':>16s} {'bits/p':>7s}  params"]
        for i, t in enumerate(ts):
            params = " ".join(f"{safe(k)}={short(v)}" for k, v in t.params.items())
            lines.append(f"{i:4d}  {safe(t.name):56s} {safe(t.codec):8s} {t.dtype:5s} {str(list(t.shape)):>16s} "
                         f"{t.bits_per_param:7.3f}  {params}")
            if sections:
                lines += [f"{'':10s}{safe(role):18s} {r.dtype:5s} {str(list(r.shape)):>16s} @{r.offset} +{r.length} "
                          f"crc32 {r.crc32:08x}" for role, r in t.record.sections.items()]
    return "\n".join(lines)


def _filtered(pattern: str | None) -> str:
    return "" if pattern is None else f" matching {short(pattern)}"


def _cell(v: Any, width: int = 80) -> str:
    """A Markdown table cell: terminal-safe, one line, with Markdown's special characters escaped."""
    return re.sub(r"([\\`*_|<>\[\]#])", r"\\\1", short(v, width))


def render_markdown(f: SpqrFile, pattern: str | None = None, tensors: bool = True) -> str:
    """The same facts as Markdown tables (as gguf-dump --markdown): for a model card or an issue."""
    s = summary(f, pattern, tensors=False)
    ts = selected(f, pattern)
    out = [f"# {_cell(f.path.name)}", "",
           f"spqrfmt v{f.version[0]}.{f.version[1]}: {len(ts)} tensors{_cell(_filtered(pattern))}, "
           f"{s['params']:,} params, {s['bytes']:,} bytes stored, {s['bits_per_param']:.3f} bits/param", "",
           "## Metadata", "", "| key | value |", "|---|---|"]
    out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in f.metadata.items()]
    out += ["", "## Codecs", "", "| codec | tensors | params | bits/param |", "|---|---:|---:|---:|"]
    out += [f"| {_cell(codec)} | {c['tensors']} | {c['params']:,} | {c['bits_per_param']:.3f} |"
            for codec, c in s["codecs"].items()]
    if tensors:
        out += ["", "## Tensors", "", "| # | name | codec | dtype | shape | bits/param | params |",
                "|---:|---|---|---|---|---:|---|"]
        for i, t in enumerate(ts):
            params = ", ".join(f"{k}={short(v, 24)}" for k, v in t.params.items())
            out.append(f"| {i} | {_cell(t.name, 200)} | {_cell(t.codec)} v{t.codec_version} | {t.dtype} | "
                       f"{'×'.join(map(str, t.shape)) or 'scalar'} | {t.bits_per_param:.3f} | {_cell(params, 200)} |")
    return "\n".join(out)


__all__ = ["codec_totals", "jsonable", "render_markdown", "render_text", "safe", "selected", "short", "summary"]
