"""torch.distributed sharding of the data rows.

Every rank draws the same queries (the generators are seeded by (seed, sigma) alone) and streams only its
slice [r N / W, (r + 1) N / W) of the data rows through the kernel.  The partial sums (max, sum exp,
sum w x, sum w ||x||^2) are then combined with two all-reduces in log-sum-exp form: MAX of the maxima,
then SUM of the sums rescaled to the common maximum.  Backend gloo on CPU tensors, NCCL on CUDA tensors.

`sharded_posterior_stats` is what the estimators call: without an initialised process group of more
than one rank it is `posterior_stats` itself.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

from lossfloor.floor.kernel import PosteriorStats, posterior_stats


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the only rank that writes outputs and shows progress."""
    return world()[0] == 0


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The rows [start, stop) of `n` that `rank` of `world_size` streams."""
    return rank * n // world_size, (rank + 1) * n // world_size


class RowWindow:
    """Rows [start, stop) of a tensor or array-like, sliced lazily (a memmap stays on disk)."""

    def __init__(self, rows, start: int, stop: int):
        self.rows, self.start, self.stop = rows, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, item: slice):
        begin, end, step = item.indices(len(self))
        if step != 1:
            raise ValueError("RowWindow supports contiguous slices only")
        return self.rows[self.start + begin:self.start + end]


def sharded_posterior_stats(queries: torch.Tensor, data, sigma: float, *, self_index=None,
                            self_log_weight: float = 0.0, group=None, **kwargs) -> PosteriorStats:
    """`posterior_stats` of all of `data`, with the rows split across the ranks of a process group."""
    active = dist.is_available() and dist.is_initialized()
    rank, size = (dist.get_rank(group), dist.get_world_size(group)) if active else (0, 1)
    if size == 1:
        return posterior_stats(queries, data, sigma, self_index=self_index,
                               self_log_weight=self_log_weight, **kwargs)
    start, stop = shard_bounds(len(data), rank, size)
    if kwargs.get("row_sq") is not None:
        kwargs["row_sq"] = kwargs["row_sq"][start:stop]
    part = posterior_stats(queries, RowWindow(data, start, stop), sigma, self_index=self_index,
                           self_log_weight=self_log_weight, row_offset=start, **kwargs)
    return all_reduce_stats(part, group)


def all_reduce_stats(part: PosteriorStats, group=None) -> PosteriorStats:
    """Combine each rank's sums over its own rows into the sums over all rows: MAX of the maxima, then
    SUM of the sums rescaled to that maximum (the `PosteriorStats.merge` rule across ranks)."""
    global_max = part.log_max.clone()
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
    safe = torch.where(torch.isfinite(global_max), global_max, torch.zeros_like(global_max))
    scale = torch.exp(part.log_max - safe)  # 0 where this rank's rows carry no weight
    packed = torch.cat([scale[:, None] * part.weight[:, None], scale[:, None] * part.weighted_sq[:, None],
                        scale[:, None] * part.weighted_x], 1)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)  # one message for all three sums
    return PosteriorStats(global_max, packed[:, 0], packed[:, 2:], packed[:, 1])


def main_only(fn, *args, **kwargs):
    """fn(*args, **kwargs) on rank 0 only (checks of --out, reading saved levels); every rank gets its
    result, or raises its error, so no rank waits forever on a rank that failed."""
    rank, size = world()
    if size == 1:
        return fn(*args, **kwargs)
    box = [None]
    if rank == 0:
        try:
            box = [(True, fn(*args, **kwargs))]
        except Exception as err:  # handed to every rank, raised below
            box = [(False, err)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def init_from_env(device: str = "cpu") -> bool:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU,
    NCCL on CUDA, where each rank takes the GPU of its LOCAL_RANK.  Returns whether a group is active."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    atexit.register(dist.destroy_process_group)
    return True


def rank_device(device: str) -> str:
    """`cuda` becomes `cuda:LOCAL_RANK` under torchrun, so each rank uses its own GPU; on CUDA, TF32 is
    turned off, as the logits q.x / sigma^2 need full float32 mantissas."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        if device == "cuda" and "LOCAL_RANK" in os.environ:
            return f"cuda:{os.environ['LOCAL_RANK']}"
    return device
