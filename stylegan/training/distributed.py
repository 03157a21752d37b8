"""Many processes on torchrun: process-group setup, gradient averaging, batch slicing, launching.

PyTorch's own engine does the work: ``torchrun`` (``torch.distributed.run``) starts one process
per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous; ``nccl`` carries
the collectives between GPUs and ``gloo`` between CPU processes (the tests).

Gradients are averaged as NVIDIA's StyleGAN2-ADA does it (``training/training_loop.py``): after
each backward, one all-reduce of all of a network's gradients flattened into a single buffer.
DistributedDataParallel is not used: its reducer hooks fire during ``backward``, and R1's
double backward (``create_graph=True`` inside the D step) together with networks that run
only some blocks (progressive growing: the unused resolutions have no gradient; DDP needs
``find_unused_parameters`` and a re-scan every step) mix poorly with them (pytorch issue
63812). With one buffer per network per step the cost is one collective, not one per
parameter, and the trainer keeps plain modules (no ``.module`` indirection, same state dicts).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from stylegan.config import TrainConfig
    from stylegan.training.schedule import Stage

# Set by torchrun in every worker it starts (torch.distributed.elastic).
_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    rank: int  # global rank of this process
    world_size: int  # processes in the job, all nodes together
    local_rank: int  # rank on this machine (selects cuda:LOCAL_RANK)
    device: torch.device  # where this process trains
    backend: str | None  # "nccl", "gloo", or None for a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    """True inside a worker that torchrun (or another launcher setting RANK/WORLD_SIZE) started."""
    env = os.environ if environ is None else environ
    return all(k in env for k in _ENV_KEYS)


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up, or describe a single process when not launched by it.

    ``device`` is what this process would use alone (the trainer's resolved ``train.device``):
    on CUDA each worker takes ``cuda:LOCAL_RANK`` and the ``nccl`` backend, on CPU ``gloo``.
    """
    if not launched_by_torchrun():
        return DistInfo(rank=0, world_size=1, local_rank=0, device=device, backend=None)
    rank, world, local = (int(os.environ[k]) for k in _ENV_KEYS)
    if world == 1:
        return DistInfo(rank=0, world_size=1, local_rank=local, device=device, backend=None)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                "use --nproc-per-node <= the number of GPUs"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"multi-process training runs on CUDA (nccl) or CPU (gloo), not on {device.type!r}")
    if not dist.is_initialized():
        # device_id binds the NCCL communicator to this GPU up front (no guessing from the rank).
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, backend=backend)


def shutdown(barrier: bool = True) -> None:
    """Leave the process group; with ``barrier`` first wait for every rank (rank 0 may still be
    writing a checkpoint or an export). Skip the barrier after an error: the other ranks may be
    blocked in a collective that will never complete, and torchrun ends them."""
    if dist.is_available() and dist.is_initialized():
        try:
            if barrier:
                dist.barrier()
        finally:
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Which samples of the global batch a rank trains on


def check_global_batches(stages: Sequence[Stage], train_cfg: TrainConfig, world_size: int) -> None:
    """Every stage's batch (a global figure: all processes together) must split evenly over them."""
    for s in stages:
        batch = train_cfg.batch_size_at(s.resolution)
        if batch % world_size:
            raise ValueError(f"batch size {batch} at {s.resolution}x{s.resolution} is not divisible by {world_size} "
                             "processes; batch sizes are global (split over the processes): change "
                             "train.batch_size(s) or --nproc-per-node")


def shard_rows(batch_size: int, world_size: int, rank: int, group_size: int) -> torch.Tensor:
    """Indices into a global batch of ``batch_size`` of the rows that ``rank`` computes.

    Every rank draws the whole batch from the same seeded stream and keeps these rows, so N
    processes train on exactly the samples one process would. The rows are chosen so that
    D's minibatch-stddev groups hold the same samples either way: ``MinibatchStd`` reshapes a
    batch of n as ``[G, n // G, ...]``, so group m is the strided set {m, m + M, m + 2M, ...}
    (M = n // G). Rank r takes whole groups, r * M/W ... (r + 1) * M/W - 1, laid out so the
    same reshape of its local batch finds them again. When the local batch cannot hold whole
    groups (``batch_size / world_size`` not a multiple of G), it takes a contiguous slice and
    the groups shrink to what fits (``groups_preserved`` says so; the Trainer warns).
    """
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} must be divisible by the number of processes ({world_size})")
    b = batch_size // world_size
    g = mbstd_group(batch_size, group_size)
    if world_size == 1 or b % g:
        return torch.arange(rank * b, (rank + 1) * b)
    m = batch_size // g  # groups in the global batch
    per_rank = m // world_size
    grid = torch.arange(batch_size).view(g, m)  # grid[k, j]: k-th member of group j
    return grid[:, rank * per_rank : (rank + 1) * per_rank].reshape(-1)


def mbstd_group(n: int, group_size: int) -> int:
    """The group size MinibatchStd uses for a batch of n (``gcd(min(group_size, n), n)``)."""
    return math.gcd(min(group_size, n), n)


def groups_preserved(batch_size: int, world_size: int, group_size: int) -> bool:
    """Whether each rank's local batch holds whole minibatch-stddev groups of the global batch."""
    return (batch_size // world_size) % mbstd_group(batch_size, group_size) == 0


# ---------------------------------------------------------------------------------------------
# Collectives


def average_gradients(params: Iterable[torch.nn.Parameter], world_size: int,
                      extra: Sequence[torch.Tensor] = ()) -> None:
    """Average the gradients of ``params`` over all ranks with ONE all-reduce (flattened buffer).

    Parameters without a gradient (blocks the current resolution does not use) are left out;
    every rank has the same set of them, since all ranks train at the same resolution. ``extra``
    tensors (e.g. the generator's ``w_avg``) ride along in the same buffer and are averaged in
    place. Unlike StyleGAN2-ADA there is no ``nan_to_num`` here: with fp16 the GradScaler must
    see an overflow (and it does on every rank, as the sum carries it) to skip that step.
    """
    if world_size == 1:
        return
    with_grad = [p for p in params if p.grad is not None]
    tensors = [p.grad for p in with_grad] + list(extra)
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat)  # SUM: every backend has it (AVG is NCCL-only)
    flat /= world_size
    for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(chunk.view_as(t))


def broadcast_state(modules: Iterable[torch.nn.Module], src: int = 0) -> None:
    """Make every rank's parameters and buffers bitwise equal to rank ``src``'s (one buffer per module)."""
    for module in modules:
        everything = [*module.parameters(), *module.buffers()]
        tensors = [t for t in everything if t.dtype == torch.float32]
        with torch.no_grad():
            for t in everything:
                if t.dtype != torch.float32:  # rare (none in G or D today): one by one, exact
                    dist.broadcast(t.data, src=src)
            if not tensors:
                continue
            flat = torch.cat([t.detach().reshape(-1) for t in tensors])
            dist.broadcast(flat, src=src)
            for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
                t.copy_(chunk.view_as(t))


def all_reduce_mean(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is unchanged)."""
    if world_size == 1:
        return values
    out = values.detach().clone()
    dist.all_reduce(out)
    return out / world_size


def check_same_across_ranks(values: Sequence[float], what: str, device: torch.device) -> None:
    """Raise on every rank when ranks disagree on ``values`` (e.g. which checkpoint they resumed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    mine = torch.tensor(list(values), dtype=torch.float64, device=device)
    lo, hi = mine.clone(), mine.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise ValueError(
            f"processes disagree on {what} (rank {dist.get_rank()} has {list(values)}, range "
            f"{lo.tolist()}..{hi.tolist()}); with several machines the run folder must be on a "
            "filesystem every machine sees"
        )


# ---------------------------------------------------------------------------------------------
# Launching torchrun for the user, and reporting from rank 0 to the process that launched it


def torchrun_command(nproc_per_node: int, module_args: Sequence[str], *, module: str = "stylegan.cli",
                     python: str | None = None) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m MODULE ARGS...``.

    ``--standalone``: a single-machine rendezvous on a free local port (several jobs on one
    machine never collide). Several machines are launched with torchrun directly (README).
    """
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc_per_node}", "-m", module, *module_args]


def strip_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE`` (or an unambiguous abbreviation of it)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if len(name) > 2 and name.startswith("--") and option.startswith(name) and len(name) >= len("--np"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def run_torchrun(nproc_per_node: int, module_args: Sequence[str], *, env: dict[str, str] | None = None) -> int:
    """Run torchrun in the foreground; returns its exit status (non-zero if any worker failed)."""
    cmd = torchrun_command(nproc_per_node, module_args)
    environ = dict(os.environ if env is None else env)
    # torchrun's default for several workers; set it here so it does not print a warning about it.
    environ.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(cmd, env=environ)


