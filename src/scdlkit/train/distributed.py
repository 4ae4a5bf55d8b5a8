"""Multi-process training with ``torch.distributed``: launch detection, set-up and reductions.

scdlkit does not start processes itself: ``torchrun --nproc_per_node=N script.py``
does, and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` in each one. A :class:`~scdlkit.Trainer` created in such a
process joins the process group (NCCL on CUDA, gloo on CPU), wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel`, reads its shard of the
training data and all-reduces the losses it reports.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

STRATEGIES = ("auto", "ddp", "single")
_ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a multi-process run.

    Attributes
    ----------
    rank
        Global rank of this process (``0`` writes checkpoints and outputs).
    world_size
        Number of processes.
    local_rank
        Rank on this node (selects the GPU).
    backend
        ``"nccl"`` or ``"gloo"``.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the process was started by ``torchrun`` (its environment variables are set).

    Examples
    --------
    >>> launched_by_torchrun()  # a plain Python process
    False
    """
    return all(key in os.environ for key in _ENV_KEYS)


def is_main_process() -> bool:
    """Return ``False`` only on ranks other than 0 of an initialised process group.

    Guard your own file writes with it in a script run under ``torchrun``
    (scdlkit's writers already do).

    Examples
    --------
    >>> is_main_process()  # a plain Python process
    True
    """
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def check_strategy(strategy: str) -> None:
    """Raise a ``ValueError`` for a strategy scdlkit does not know."""
    if strategy not in STRATEGIES:
        msg = f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}."
        raise ValueError(msg)


def wants_distributed(strategy: str) -> bool:
    """Whether ``strategy`` asks for DDP in this process.

    ``"auto"`` uses DDP when the process belongs to a multi-process ``torchrun``
    launch (or an initialised process group); ``"ddp"`` always does and needs
    the ``torchrun`` environment; ``"single"`` never does.
    """
    check_strategy(strategy)
    if strategy == "single":
        return False
    initialised = dist.is_available() and dist.is_initialized()
    if strategy == "ddp":
        if not (initialised or launched_by_torchrun()):
            msg = (
                "strategy='ddp' needs several processes started by torchrun, e.g. "
                "`torchrun --nproc_per_node=2 train.py` (one per GPU, or CPU processes with gloo); "
                "this process was not started that way. Use strategy='auto' to train in one process."
            )
            raise ValueError(msg)
        return True
    if initialised:
        return dist.get_world_size() > 1
    return launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1


def local_device(device: str | torch.device) -> str | torch.device:
    """Give every rank its own GPU: ``"auto"``/``"cuda"`` become ``cuda:<LOCAL_RANK>``."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available() and (device == "auto" or str(device) == "cuda"):
        return torch.device("cuda", local_rank)
    return device


def setup(device: torch.device) -> DistributedContext:
    """Join (or reuse) the process group for ``device`` and return this process's context.

    The group is created from the ``torchrun`` environment with NCCL for CUDA
    devices and gloo otherwise, and destroyed when the process exits. After an
    elastic restart (``torchrun --max-restarts``) the workers of the new attempt
    meet under keys of their own in torchrun's store, never reading the
    addresses the dead workers left there.
    """
    if not dist.is_available():
        msg = "This PyTorch build has no torch.distributed support; train with strategy='single'."
        raise RuntimeError(msg)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store, rank, world_size = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"scdlkit/attempt_{attempt}", store)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
        atexit.register(_destroy)
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        backend=str(dist.get_backend()),
    )


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_across_ranks(sums: dict[str, float], n_cells: int) -> tuple[dict[str, float], int]:
    """Add per-rank loss sums and cell counts over all ranks (every rank gets the totals).

    Ranks may hold different keys (a rank with no validation cells holds none),
    so the dictionaries are gathered as objects; this runs once per epoch.
    """
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (sums, n_cells))
    total: dict[str, float] = {}
    for rank_sums, _ in gathered:
        for key, value in rank_sums.items():
            total[key] = total.get(key, 0.0) + value
    return total, sum(count for _, count in gathered)


def any_across_ranks(flags: list[bool], device: torch.device) -> list[bool]:
    """Return, for each flag, whether it is set on any rank (every rank gets the same answer).

    One small all-reduce; the Trainer calls it after every step while it can
    write states, so that all ranks stop (or save) at the same step.
    """
    values = torch.tensor([int(flag) for flag in flags], dtype=torch.int32, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def gather(value: Any) -> list[Any]:
    """Return ``value`` of every rank, in rank order (picklable objects; every rank gets the list)."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a state)."""
    dist.barrier()


def broadcast(value: Any) -> Any:
    """Return rank 0's ``value`` on every rank (a picklable object)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
