"""Time from ``load_model`` to the first generated token, cold and warm (needs CUDA and a ``.spqr`` model file).

Why (issue #13, item 4): a user's first token waits for the load, Triton's compilation of every kernel
config and, with ``autotune``, the per-shape timing of tile configs (kernels/tune.py). Each phase runs in
its own process so that nothing is warm that a fresh process would not have:

* ``cold``: empty Triton and spqrfmt caches, ``autotune=True`` (compiles and times every candidate);
* ``warm``: the same caches again, ``autotune=True`` (the tuning cache answers; Triton loads its binaries);
* ``rules``: the same Triton cache, ``autotune=False`` (the built-in per-shape rules, nothing timed).

    python bench/first_token.py MODEL.spqr --out $OUT [--prompt 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(path: str, autotune: bool, prompt: int) -> dict:
    import torch

    from spqrfmt.model import load_model

    t0 = time.perf_counter()
    model = load_model(path, device="cuda", autotune=autotune)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, prompt), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return {"load_s": round(t1 - t0, 2), "first_token_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--out", default=None)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--child", choices=["tune", "rules"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model, args.child == "tune", args.prompt)), flush=True)
        return 0
    caches = tempfile.mkdtemp(prefix="spqr-first-token-")
    env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(caches, "triton"),
               SPQRFMT_CACHE_DIR=os.path.join(caches, "spqrfmt"))
    rows = []
    for phase, mode in (("cold", "tune"), ("warm", "tune"), ("rules", "rules")):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, os.path.abspath(__file__), args.model, "--child", mode,
                            "--prompt", str(args.prompt)], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"error: the {phase} process failed:\n{r.stderr[-2000:]}", file=sys.stderr)
            return 1
        row = {"phase": phase, "autotune": mode == "tune", **json.loads(r.stdout.strip().splitlines()[-1]),
               "process_s": round(time.perf_counter() - t, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    tune_file = os.path.join(caches, "spqrfmt", "tune.json")
    entries = json.load(open(tune_file))["entries"] if os.path.exists(tune_file) else {}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "first_token.json"), "w") as f:
            json.dump({"model": os.path.basename(args.model), "prompt": args.prompt, "rows": rows,
                       "tuned": entries}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
