"""Scale-out with torch.distributed, launched by torchrun: each rank owns whole prompt groups.

Data parallelism is explicit: every rank holds the full model, samples and scores its share of the global
batch, computes advantages over the gathered global batch (so batch statistics are global), normalises its
loss by the global token / sequence counts, and sums gradients across ranks before each optimizer step.
The sum of the ranks' gradients is then exactly the gradient of the one-process loss over the global batch.
With one process every call here is the identity. With ``train.parallel: fsdp`` the model is sharded instead of
replicated (rlft/backends/fsdp.py); the rest stays as here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.on:
            torch.distributed.barrier()

    def sum(self, x: float | int) -> float:
        """A number summed over ranks (a Python float)."""
        if not self.on:
            return x
        t = torch.tensor([float(x)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t)

    def all_reduce_grads(self, params) -> None:
        """Sum gradients over ranks, flattened into one buffer per dtype and device (few messages). Sharded
        gradients (FSDP's DTensors, rlft/backends/fsdp.py) are already summed and left alone."""
        if not self.on:
            return
        grads = [p.grad for p in params if p.grad is not None and not is_sharded(p.grad)]
        buckets: dict = {}
        for g in grads:
            buckets.setdefault((g.dtype, g.device), []).append(g)
        for group in buckets.values():
            flat = torch.cat([g.reshape(-1) for g in group])
            torch.distributed.all_reduce(flat)
            offset = 0
            for g in group:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def gather_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """Concatenate every rank's [n_r, T_r, ...] tensor into [sum n_r, max T, ...] (zero-padded), in rank
        order; also return the slice of the result that holds this rank's rows."""
        if not self.on:
            return x, slice(0, x.shape[0])
        shape = torch.tensor([x.shape[0], x.shape[1] if x.dim() > 1 else 0], dtype=torch.long)
        shapes = [torch.zeros_like(shape) for _ in range(self.world)]
        torch.distributed.all_gather(shapes, shape)
        n_max = max(int(s[0]) for s in shapes)
        t_max = max(int(s[1]) for s in shapes)
        padded = torch.zeros((n_max, *((t_max,) if x.dim() > 1 else ()), *x.shape[2:]), dtype=x.dtype,
                             device=x.device)
        padded[tuple(slice(0, d) for d in x.shape[:2])] = x
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        out = torch.cat([p[:int(s[0])] for p, s in zip(parts, shapes)])
        start = sum(int(s[0]) for s in shapes[:self.rank])
        return out, slice(start, start + x.shape[0])

    def gather_objects(self, obj) -> list:
        if not self.on:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def mean_metrics(self, metrics: dict) -> dict:
        """Average numeric metrics over ranks (each rank holds the same number of samples)."""
        if not self.on:
            return metrics
        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return {**metrics, **{k: float(v) / self.world for k, v in zip(keys, t)}}


def setup() -> Dist:
    """Join the process group that torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), local)


def is_fsdp(module) -> bool:
    """An FSDP2-sharded module (`fully_shard`, rlft/backends/fsdp.py)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def is_sharded(t: torch.Tensor) -> bool:
    """A DTensor: a shard of a parameter or gradient that FSDP holds (only the root forward may use it)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)
