"""Data-parallel training over several processes with torch.distributed (DDP).

Launch (one process per rank; gloo on CPU, NCCL on GPU, one GPU per process)::

    equimd train CONFIG.yaml --nproc N            # starts torchrun (torch.distributed.run) itself
    torchrun --nproc_per_node N -m equimd.cli train CONFIG.yaml     # the same, by hand / multi-node

What is exact. Every rank draws the same shuffled order from the same seeded generator, so the
global batches of B structures are those of a single-process run; rank r takes structures
r, r + N, r + 2N, ... of each global batch. The loss of a rank uses the label counts of the
whole global batch as the denominators of its averages (`loss.LabelCounts`) and is multiplied
by N, so the gradient DDP averages over the ranks is the gradient of the single-process loss of
the global batch (equal to round-off: only the order of the sums differs). A rank left
without a structure (a last batch smaller than N) evaluates one structure with weight 0.
Statistics (E0s, scale, shift, avg_num_neighbors) are broadcast from rank 0; validation and
training metrics are sums all-reduced over the ranks; only rank 0 writes files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from equimd.potentials.train.metrics import ErrorAccumulator

T = TypeVar("T")


class Ranks:
    """This process's place among the training processes; with `world_size == 1` every method
    is a no-op, so the trainer has one code path."""

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        device: torch.device | None = None,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = device or torch.device("cpu")  # where collectives put their tensors

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This rank's structures of a global batch: every `world_size`-th from `rank`."""
        return list(indices[self.rank :: self.world_size])

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over the ranks (float64 all-reduce)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def on_main(self, function: Callable[[], T]) -> T:
        """Run `function` on rank 0 only; its result, or the exception it raised, reaches every
        rank (so an error such as an existing run directory stops all ranks alike)."""
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                outcome = (True, function())
            except Exception as error:  # re-raised below, on every rank
                outcome = (False, error)
        ok, value = self.broadcast(outcome)
        if not ok:
            raise value
        return value

    def reduce_errors(self, errors: ErrorAccumulator) -> ErrorAccumulator:
        """The accumulator of all ranks' errors summed (same on every rank)."""
        if not self.distributed:
            return errors
        quantities = list(errors.sums)
        flat = self.sum([x for q in quantities for x in errors.sums[q]])
        total = ErrorAccumulator()
        total.load_state_dict({q: flat[3 * i : 3 * i + 3] for i, q in enumerate(quantities)})
        return total

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` as a DistributedDataParallel module (itself on one process).

        find_unused_parameters: a parameter without a gradient in a step (a model branch the
        loss does not reach, a backend that skips a path) would otherwise silently break the
        gradient averaging; the graph walk it costs is small next to the double backward."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=True
        )


def _environment_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def ranks_from_environment(device: torch.device) -> Iterator[tuple[Ranks, torch.device]]:
    """The process group set up by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in
    the environment), or a single process when WORLD_SIZE is absent or 1. Yields the ranks and
    the training device: on CUDA each process takes GPU LOCAL_RANK. Ranks other than 0 print
    nothing to stdout."""
    world_size = _environment_world_size()
    if world_size <= 1:
        yield Ranks(), device
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    initialized_here = not dist.is_initialized()
    if initialized_here:
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    ranks = Ranks(
        rank, world_size, local_rank, device if backend == "nccl" else torch.device("cpu")
    )
    stdout = sys.stdout
    try:
        if not ranks.is_main:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - closed below
        yield ranks, device
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
        if initialized_here:
            dist.destroy_process_group()


def launch(arguments: Sequence[str], nproc: int) -> int:
    """Run `equimd ARGUMENTS` (`train CONFIG ...`) in `nproc` processes under torchrun on this machine
    (rendezvous on a free local port) and wait; returns torchrun's exit status. If a rank dies,
    torchrun stops the others and exits non-zero; Ctrl-C or SIGTERM reaches every rank, which
    write last.pt and stop."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "equimd.cli",
        *arguments,
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, set here to silence its notice
    process = subprocess.Popen(command, env=env)
    forward = lambda signum, frame: process.send_signal(signum)  # noqa: E731
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                status = process.wait()
                break
            except KeyboardInterrupt:  # Ctrl-C reached torchrun too (same process group)
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    if status != 0:
        print(
            f"equimd: error: the {nproc} training processes stopped (torchrun exit status "
            f"{status}; its report is above); continue from the last checkpoint with --resume",
            file=sys.stderr,
        )
    return status
