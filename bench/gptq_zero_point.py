"""Which part of GPTQ's pipeline sets its perplexity: ours vs the authors' solver, the CLI's driver vs the bench's.

Why: on SmolLM2-135M our GPTQ scored far worse than IST-DASLab's GPTQ (191 vs 103 at ~3 bits, H200) while both
gave the same layer-output error on the same Hessians. This runs one variant on the CPU at reduced settings and
prints one JSON line, so the variants can be run side by side (docs/quality.md, "Second H200 run"):

    python bench/gptq_zero_point.py --variant cli                   # quantize_model_calibrated (spqr convert's)
    python bench/gptq_zero_point.py --variant cli --no-round-zero   # ... with the f16 zero-point kept unrounded
    python bench/gptq_zero_point.py --variant bench                 # bench/quality.py's calibrate_sequential
    python bench/gptq_zero_point.py --variant authors --peer-dir DIR               # their GPTQ, same driver
    python bench/gptq_zero_point.py --variant authors --peer-dir DIR --no-round-zero  # their GPTQ, our zero-point

Needs the SmolLM2 folder and the Wikipedia split that ``bench/quality.py --corpus wiki`` made in ``--cache``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=("cli", "bench", "authors"), required=True)
    ap.add_argument("--round-zero", action=argparse.BooleanOptionalAction, default=True,
                    help="integer f16 zero-points (GPTQ's quantizer; our default since 2026-12-02)")
    ap.add_argument("--target", default="3", help="bench/quality.py's GPTQ target: 3 (row groups), 3.5, 4, 4.6")
    ap.add_argument("--act-dtype", default="float16", choices=("float16", "float32"), help="cli: hidden states")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/spqr-quality"), help="bench/quality.py's --out")
    ap.add_argument("--wiki-split", type=Path, default=None)
    ap.add_argument("--peer-dir", type=Path, default=None)
    ap.add_argument("--work-dir", type=Path, default=None, help="cli: calibration work dir (default: a fresh temp)")
    a = ap.parse_args()

    import tempfile

    import numpy as np
    import quality as Q
    import torch
    from transformers import AutoTokenizer

    from spqrfmt.convert import QuantConfig
    from spqrfmt.encoder.calibrate import quantize_model_calibrated
    from spqrfmt.encoder.gptq import GPTQConfig, quantize_gptq
    from spqrfmt.hf.evaluate import load_hf_model, perplexity, tokenize_texts

    torch.manual_seed(0)
    g = Q.GPTQ_SETTINGS[a.target]
    model_dir = a.cache / Q.MODELS["smollm2"][0]
    calib, held = Q.load_wiki(a.cache, a.wiki_split)
    tokens = tokenize_texts(AutoTokenizer.from_pretrained(model_dir), held)[:a.eval_tokens]
    args = types.SimpleNamespace(nsamples=a.nsamples, seqlen=a.seqlen, batch_size=4, device="cpu", verbose=False)
    t0 = time.perf_counter()
    if a.variant == "cli":
        q = QuantConfig(method="gptq", bits=g["bits"], group_size=g["group_size"], scale_bits=16, zero_bits=16,
                        outlier_fraction=0.0)
        cfg = q.calib_config(nsamples=a.nsamples, seqlen=a.seqlen, batch_size=4, device="cpu", act_dtype=a.act_dtype)
        if not a.round_zero:
            import spqrfmt.codecs.spqr as codec

            plain = codec.Options.gptq_config
            codec.Options.gptq_config = lambda self: dataclasses.replace(plain(self), round_zero=False)
        work = a.work_dir or Path(tempfile.mkdtemp(prefix="gptq-zero-"))
        store = quantize_model_calibrated(model_dir, calib, cfg, progress=False, work_dir=work)
        weights = {k: store[k].dequantized for k in store}
    else:
        if a.variant == "bench":
            cfg = GPTQConfig.plain_gptq(g["bits"], g["group_size"], round_zero=a.round_zero)
            solve = lambda _n, w, h, _i: quantize_gptq(w, h, cfg)  # noqa: E731
        else:
            if a.peer_dir is None:
                raise SystemExit("--variant authors needs --peer-dir")
            if not a.round_zero:  # their quantizer with our zero-point: -min/scale unrounded, round(w/S + Z)
                sys.path.insert(0, str(a.peer_dir / "gptq"))
                import gptq as their_gptq
                import quant as their_quant

                find = their_quant.Quantizer.find_params

                def find_params(self, x, weight=False):
                    find(self, x, weight)
                    lo = torch.minimum(x.flatten(1).min(1)[0], torch.zeros(x.shape[0], device=x.device))
                    self.zero = (-lo / self.scale.flatten()).reshape(self.scale.shape)

                def quantize(x, scale, zero, maxq):
                    return scale * (torch.clamp(torch.round(x / scale + zero), 0, maxq) - zero)

                their_quant.Quantizer.find_params = find_params
                their_quant.quantize = their_gptq.quantize = quantize
            solve = Q.peer_solver("GPTQ-authors", g, a.peer_dir, 0.2, "cpu")
        encoded, _ = Q.calibrate_sequential(model_dir, calib, solve, args)
        weights = {k: e.dequantized for k, e in encoded.items()}
    t1 = time.perf_counter()
    model = load_hf_model(model_dir, device="cpu")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for k, w in weights.items():
            params[k].copy_(torch.from_numpy(np.asarray(w)))
    ppl = perplexity(model, tokens, seq_len=512, batch_size=4)
    print(json.dumps({"variant": a.variant, "round_zero": a.round_zero, "target": a.target, "act_dtype": a.act_dtype,
                      "nsamples": a.nsamples, "seqlen": a.seqlen, "eval_tokens": int(tokens.numel()), "ppl": ppl,
                      "calibrate_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
