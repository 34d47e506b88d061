"""Run by tests/test_parallel.py under torchrun (gloo, CPU): load a .spqr with tp = world size, save the logits.

argv: FILE OUT; writes OUT.rankR.npy (logits of a fixed prompt) and OUT.rankR.json (what the rank loaded).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.distributed as dist

import spqrfmt

PROMPT = [[1, 5, 9, 17, 33, 65, 100, 3, 42, 7]]


def main() -> None:
    path, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = spqrfmt.load_model(path, tp=dist.get_world_size(), rank=rank, use_kernels=False)
    with torch.no_grad():
        logits = model(torch.tensor(PROMPT)).logits
    np.save(f"{out}.rank{rank}.npy", logits.float().numpy())
    r = model.spqr_load_report
    q = model.model.layers[0].self_attn.q_proj
    row = type(model.model.layers[0].self_attn.o_proj).__name__
    gathers = sum(getattr(m, "features", None) is not None for m in model.modules())
    json.dump({"sharded": r.sharded_layers, "bytes_read": r.sharded_bytes_read, "q_rows": q.out_features,
               "o_proj": row, "gathers": gathers}, open(f"{out}.rank{rank}.json", "w"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
