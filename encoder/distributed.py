"""torch.distributed for calibration: which rank does what, and the few collectives it needs.

Launched by ``torchrun --nproc-per-node N -m spqrfmt.cli convert --calibrate …``
(or ``spqr convert --distributed`` under torchrun): each rank runs a contiguous
share of the calibration batches through every block, the Hessians' int64
sums (``spqrfmt.encoder.hessian``) are all-reduced, linear layer j of a block is
solved on rank ``j % N`` and its encoding broadcast to all, so every rank can
run the quantized block forward. Rank 0 alone writes files. gloo on CPU, NCCL
on CUDA (one GPU per rank: ``cuda:LOCAL_RANK``).

Every exchanged object is a tensor (an encoding travels as the bytes of the
same npz the work directory holds): nothing is pickled.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["World", "init", "launched"]


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE) with more than one rank."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init(device: str) -> None:
    """Join the process group torchrun describes (env://): NCCL for cuda, gloo for cpu. Idempotent."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise ValueError("--distributed needs a launcher: run it under torchrun --nproc-per-node N")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")


class World:
    """This process's place among the ranks (a single process is rank 0 of 1 and needs no process group)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.active else 0
        self.size = dist.get_world_size() if self.active else 1
        self.comm_device: Any = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> Any:
        """The calibration device of this rank: ``cuda`` means this rank's GPU."""
        import torch

        dev = torch.device(name)
        if self.active and dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.comm_device = dev if dev.type == "cuda" else torch.device("cpu")
        return dev

    def share(self, n: int) -> range:
        """This rank's contiguous share of ``n`` batches (every rank gets at least one)."""
        if n < self.size:
            raise ValueError(f"{n} calibration batches for {self.size} ranks: use more samples or a smaller "
                             "--batch-size, so that every rank gets at least one batch")
        return range(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def owner(self, j: int) -> int:
        return j % self.size

    def max_(self, values: list[float]) -> list[float]:
        """Element-wise max over ranks (exact: no rounding)."""
        return self._reduce(values, "max")

    def sum_int(self, t: Any) -> Any:
        """All-reduce an int64 tensor in place (exact) and return it."""
        import torch.distributed as dist

        if self.active:
            moved = t.to(self.comm_device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            t = moved.to(t.device)
        return t

    def _reduce(self, values: list[float], op: str) -> list[float]:
        import torch
        import torch.distributed as dist

        if not self.active or not values:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]

    def flag(self, problem: str | None) -> None:
        """Rank 0's verdict to every rank: all raise ValueError(problem) together, or none does."""
        import torch
        import torch.distributed as dist

        if not self.active:
            if problem:
                raise ValueError(problem)
            return
        data = (problem or "").encode()
        n = torch.tensor([len(data)], dtype=torch.int64, device=self.comm_device)
        dist.broadcast(n, src=0)
        if int(n):
            raise ValueError(self.bytes_from(0, data if self.main else b"", int(n)).decode())

    def bytes_from(self, src: int, data: bytes, length: int | None = None) -> bytes:
        """``data`` as rank ``src`` holds it, on every rank."""
        import numpy as np
        import torch
        import torch.distributed as dist

        if not self.active:
            return data
        if length is None:
            n = torch.tensor([len(data) if self.rank == src else 0], dtype=torch.int64, device=self.comm_device)
            dist.broadcast(n, src=src)
            length = int(n)
        buf = (torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()) if self.rank == src
               else torch.empty(length, dtype=torch.uint8))
        buf = buf.to(self.comm_device)
        dist.broadcast(buf, src=src)
        return buf.cpu().numpy().tobytes()

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.active:
            dist.barrier()
