"""GPU check of the transformers integration: ``from_pretrained(folder, device_map="cuda")`` of an exported folder.

What a user does, per codec (spqr, squeezellm, quip): a small Llama built here
with random weights is saved as an HF folder, converted with ``spqr convert``,
exported with ``spqr export-hf``, then loaded with
``AutoModelForCausalLM.from_pretrained(DIR, device_map="cuda")`` after
``import spqrfmt.hf``. Checked: every quantized linear stayed compressed (a
kernel module, not ``nn.Linear``); the logits are identical to
``spqrfmt.load_model(file, device="cuda")`` (same kernels) and close to the
dense decode on CPU in float64 (relative error, the kernels' contract); a short
greedy ``generate`` runs. CPU-only machines cannot run it (the tests cover the
CPU path).

    python bench/gpu_check_hf.py --out $OUT        # < 2 minutes on one H200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CODECS = ("spqr", "squeezellm", "quip")


def build_source(folder: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(folder)


def spqr(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "spqrfmt.cli", *args], check=True)


def check(codec: str, src: Path, work: Path) -> dict:
    from transformers import AutoModelForCausalLM

    import spqrfmt
    import spqrfmt.hf  # noqa: F401 - registers quant_method "spqrfmt" with transformers

    t0 = time.perf_counter()
    path = work / f"{codec}.spqr"
    spqr("convert", str(src), "-o", str(path), "--codec", codec, "--min-features", "64", "-q")
    folder = work / f"{codec}-hf"
    spqr("export-hf", str(path), "-o", str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="cuda", dtype=torch.float16).eval()
    with spqrfmt.open(path) as f:
        quantized = [n for n, t in f.items() if t.codec != "raw"]
    modules = dict(model.named_modules())
    kept = [n for n in quantized if not isinstance(modules.get(n.rpartition(".")[0]), torch.nn.Linear)]
    ours = spqrfmt.load_model(path, device="cuda", dtype=torch.float16).eval()
    dense = spqrfmt.load_model(path, device="cpu", dtype=torch.float64, use_kernels=False).eval()
    ids = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a = model(ids.cuda()).logits.float().cpu()
        b = ours(ids.cuda()).logits.float().cpu()
        ref = dense(ids).logits
        gen = model.generate(ids[:1].cuda(), max_new_tokens=8, do_sample=False)
    rel = float((a.double() - ref).norm() / ref.norm())
    return {"codec": codec, "quantized_tensors": len(quantized), "kept_compressed": len(kept),
            "module_types": sorted({type(modules[n.rpartition('.')[0]]).__name__ for n in quantized}),
            "logits_equal_load_model": bool(torch.equal(a, b)), "relerr_vs_f64_dense": rel,
            "generated_tokens": int(gen.shape[1] - 1), "seconds": round(time.perf_counter() - t0, 1),
            "ok": len(kept) == len(quantized) and bool(torch.equal(a, b)) and rel < 2e-2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="folder for gpu_check_hf.json")
    ap.add_argument("--codecs", nargs="+", choices=CODECS, default=list(CODECS))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check_hf: needs a CUDA device", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_source(work / "src")
        for codec in args.codecs:
            try:
                r = check(codec, work / "src", work)
            except Exception as e:  # noqa: BLE001 - record and go on with the next codec
                r = {"codec": codec, "ok": False, "error": f"{type(e).__name__}: {str(e)[:400]}"}
            print(json.dumps(r), flush=True)
            rows.append(r)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check_hf.json").write_text(json.dumps({
            "device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, indent=1))
    ok = all(r["ok"] for r in rows)
    print(f"gpu_check_hf: {sum(r['ok'] for r in rows)}/{len(rows)} codecs ok", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
