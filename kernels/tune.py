"""Per-shape tile configs of the tiled spqr matvec, timed once on this GPU and cached on disk.

Why: the batch-1 rules of :func:`~.spqr.default_config` are fits to one H200 and one Triton version
(the same kernel compiles to 71 registers under one Triton and 95 under another, which moves the best
split by whole waves, docs/kernels.md). A small autotune per (GPU, Triton, shape, format parameters,
batch, dtype) finds the config this machine runs fastest, and a JSON cache keeps it, so it is timed
once per machine, never per call: :func:`tune_model` after ``load_model`` (or ``load_model(...,
autotune=True)``, or ``SPQRFMT_AUTOTUNE=1``), then every later process reads the cache at each tensor's
first call (``_tune_cache.lookup``).

The cache itself (where it lives, what it accepts) is ``_tune_cache.py``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import torch

from . import spqr as K
from ._launch import cdiv
from ._tune_cache import _load, _save, key


def candidates(prepared: K.PreparedSpQR, batch: int) -> list[K.MatvecConfig]:
    """The default first, then tiles and splits around it: BM 32/64/128 at splits that give about 4, 5 and 8
    programs per SM, x built inline or not (batch 1), a register cap at BM 128."""
    m, n = prepared.shape
    sms = torch.cuda.get_device_properties(prepared.device).multi_processor_count
    nut = cdiv(n, 32)
    out = [K.default_config(prepared, batch)]
    if batch == 1:
        for bm, nw in ((32, 2), (64, 4), (128, 4)):
            progs = cdiv(m, bm)
            n_tiles = cdiv(nut, 8)
            for per_sm in (4, 5, 8):
                split = max(1, min(n_tiles, round(per_sm * sms / progs)))
                for xin in ((False, True) if n <= 8192 else (False,)):
                    out.append(K.MatvecConfig(BM=bm, NH=8, num_warps=nw, split=split, x_inline=xin,
                                              maxnreg=96 if bm == 128 else None))
    else:
        for bm in (64, 128):
            for per_sm in (2, 4):
                split = max(1, min(cdiv(nut, 4), round(per_sm * sms / cdiv(m, bm))))
                out.append(K.MatvecConfig(BM=bm, NH=4, num_warps=4, split=split))
    seen, uniq = set(), []
    for c in out:
        t = tuple(asdict(c).items())
        if t not in seen:
            seen.add(t)
            uniq.append(c)
    return uniq


def graph_time(fns: list, reps: int = 20, iters: int = 15) -> float:
    """Median seconds per call of a CUDA graph running ``fns`` round-robin ``reps`` times (launch cost excluded,
    as in a decode step); the benchmarks in ``bench/`` time with it too."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            fns[i % len(fns)]()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3 / reps)
    del g
    return statistics.median(ts)


def tune(prepared: K.PreparedSpQR, batch: int = 1, dtype: torch.dtype = torch.float16,
         save: bool = True) -> dict[str, Any]:
    """Time every candidate on this tensor, keep the fastest whose result agrees with the default's (relative
    difference <= 2e-3: candidates differ only in summation order), cache it and return the entry."""
    if prepared.device.type != "cuda" or prepared.layout != "tiled":
        raise ValueError("tune needs a tiled-layout tensor on a CUDA device")
    n = prepared.shape[1]
    gen = torch.Generator(device=prepared.device).manual_seed(0)
    x = torch.randn((batch, n), generator=gen, device=prepared.device).to(dtype)
    cands = candidates(prepared, batch)
    ref = K.matvec(prepared, x, config=cands[0]).float()
    best: tuple[float, K.MatvecConfig] | None = None
    default_us = None
    for c in cands:
        y = K.matvec(prepared, x, config=c).float()
        if float((y - ref).norm()) > 2e-3 * float(ref.norm()):
            continue
        us = graph_time([lambda c=c: K.matvec(prepared, x, config=c)], reps=10, iters=5) * 1e6
        if default_us is None:
            default_us = us
        if best is None or us < best[0]:
            best = (us, c)
    assert best is not None  # the default always agrees with itself
    us, c = best
    entry = {"BM": c.BM, "NH": c.NH, "num_warps": c.num_warps, "split": c.split, "x_inline": c.x_inline,
             "maxnreg": c.maxnreg, "us": round(us, 2), "default_us": round(default_us or us, 2),
             "candidates": len(cands)}
    k = key(prepared, batch, dtype)
    mem = _load()
    mem[k] = entry
    if save:
        _save(mem)
    prepared._plans.clear()  # the next call builds its plan from the new entry
    return entry


def tune_model(model: torch.nn.Module, batches: Iterable[int] = (1,), dtype: torch.dtype | None = None,
               progress: bool = True) -> dict[str, dict[str, Any]]:
    """Tune every distinct (shape, parameters) key of a model's spqr layers that the cache does not hold yet;
    layers of the same key share the result. Returns the entries by key (cached ones included)."""
    from .linear import CodecLinear

    layers = [mod for mod in model.modules() if isinstance(mod, CodecLinear) and mod.codec == "spqr"
              and getattr(mod.prepared, "layout", None) == "tiled" and mod.prepared.device.type == "cuda"]
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float16)
    todo: dict[str, tuple[K.PreparedSpQR, int]] = {}
    done: dict[str, dict[str, Any]] = {}
    mem = _load()
    for mod in layers:
        for b in batches:
            k = key(mod.prepared, b, dtype)
            if k in mem:
                done[k] = mem[k]
            elif k not in todo:
                todo[k] = (mod.prepared, b)
    items = list(todo.items())
    bar = None
    if progress and items:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc="spqr autotune", unit="shape")
        except ImportError:
            bar = None
    for k, (prep, b) in items:
        done[k] = tune(prep, b, dtype, save=False)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if items:
        _save(_load())
    for mod in layers:  # layers sharing a key get the new plans too
        mod.prepared._plans.clear()
    return done
