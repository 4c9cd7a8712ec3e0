"""Data-parallel training under ``torchrun``: one process per device, one run folder.

``torchrun --nproc-per-node N -m adact train ...`` starts N copies of the ordinary command;
torchrun tells each its place through ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. This module
reads them (:func:`env`), joins the process group (:func:`setup`: NCCL on CUDA, gloo on CPU, on
``cuda:LOCAL_RANK``) and provides the few pieces the training loop needs to behave exactly like
one process with the same global batch:

* :func:`wrap` puts the model in ``DistributedDataParallel``, after converting BatchNorm to
  synchronised BatchNorm with ``sync_bn`` (torch's on CUDA; :class:`CpuSyncBatchNorm` on the
  CPU, where torch's refuses to run).
* :func:`shard_loss` / :func:`global_mean`: each rank takes its slice of every global batch
  (:class:`adact.data.DeviceLoader` with ``rank`` / ``world_size``) and scales its summed loss so
  that DDP's gradient average equals the single-process gradient of the global batch, uneven
  slices included. The all-reduced loss is also the NaN flag: a NaN on any rank is a NaN on all
  of them, so every rank stops at the same step.
* :func:`all_sum` adds evaluation counts over ranks, so an accuracy covers the whole test set
  exactly once; :func:`sync_buffers` gives every rank rank 0's BatchNorm statistics first.
* :func:`writer` / :func:`barrier`: only rank 0 writes the run folder and prints.

Without ``WORLD_SIZE > 1`` every function is a no-op that returns its input, so the training
loop has one code path. The error of a lost peer (a killed rank, a dead machine) becomes one
line through :func:`peer_failure_message`; a peer that hangs is caught by the process group's timeout (``ADACT_DIST_TIMEOUT`` seconds, default 600).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from adact.errors import UserError

__all__ = [
    "CpuSyncBatchNorm",
    "DistEnv",
    "all_sum",
    "as_writer",
    "barrier",
    "broadcast_object",
    "cleanup",
    "convert_sync_bn",
    "env",
    "global_mean",
    "job_device_index",
    "peer_failure_message",
    "rank_seed",
    "seed_epoch",
    "setup",
    "shard",
    "shard_loss",
    "silence_non_writers",
    "sync_buffers",
    "timeout",
    "unwrap",
    "wrap",
    "writer",
]

_TIMEOUT_ENV = "ADACT_DIST_TIMEOUT"
_DEFAULT_TIMEOUT_S = 600.0
# The device collectives of this process run on (NCCL needs CUDA tensors, gloo takes CPU ones).
_comm_device: torch.device = torch.device("cpu")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job; ``DistEnv()`` is a plain single process."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process takes part: collectives and sharding are on."""
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the run folder and prints; the others only compute."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer; torchrun sets it, "
                         f"do not set it by hand") from None


def env() -> DistEnv:
    """Read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (set by torchrun); a single process without them."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UserError(f"inconsistent torchrun environment: WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}")
    return DistEnv(world, rank, local)


def timeout() -> timedelta:
    """How long a collective waits for a silent peer before failing (``ADACT_DIST_TIMEOUT`` seconds)."""
    text = os.environ.get(_TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else _DEFAULT_TIMEOUT_S
    except ValueError:
        raise UserError(f"{_TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if not seconds > 0:
        raise UserError(f"{_TIMEOUT_ENV} must be > 0 seconds, got {text}")
    return timedelta(seconds=seconds)


def setup(device: torch.device) -> torch.device:
    """Join the torchrun job, if this is one; returns the device this rank trains on.

    CUDA ranks get ``cuda:LOCAL_RANK`` and NCCL; CPU ranks get gloo. Idempotent: ``adact
    reproduce`` trains many runs in one process group. A single process gets ``device`` back.
    """
    global _comm_device
    e = env()
    if not e.enabled:
        return device
    if device.type == "cuda":
        if e.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {e.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                             f"start at most that many processes per node (--nproc-per-node)")
        device = torch.device("cuda", e.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"torchrun runs on CUDA or the CPU, not on {device.type}; use --device cuda or cpu")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout(), device_id=device if device.type == "cuda" else None)
    _comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    return device


def cleanup() -> None:
    """Leave the process group (if joined); safe to call in any process, any number of times."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def writer() -> bool:
    """Whether this process writes files and prints: rank 0, or a single process."""
    return not _active() or dist.get_rank() == 0


def barrier() -> None:
    """Wait until every rank is here (a no-op in a single process)."""
    if _active():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank, so all take the same branch (e.g. "already finished")."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(*values: float) -> tuple[float, ...]:
    """Each value summed over the ranks (float64, so counts up to 2**53 stay exact)."""
    if not _active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device)
    dist.all_reduce(t)
    return tuple(t.tolist())


def shard_loss(logits: Tensor, y: Tensor, global_batch: int, label_smoothing: float = 0.0) -> Tensor:
    """This rank's part of the global batch's mean cross-entropy, scaled for DDP.

    DDP averages gradients over ``W`` ranks, so each rank returns ``W * sum(its losses) /
    global_batch``: the average is then exactly the gradient of the global batch's mean, even
    when the slices differ in size. A single process gets the plain mean. ``label_smoothing`` is
    passed to ``F.cross_entropy`` (it is per sample, so the scaling holds with it too).
    """
    if not _active():
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    return (F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=label_smoothing)
            * (dist.get_world_size() / global_batch))


def global_mean(loss: Tensor) -> Tensor:
    """The global batch's mean loss from every rank's :func:`shard_loss`; NaN on all ranks if on any."""
    if not _active():
        return loss.detach()
    t = loss.detach().to(_comm_device, torch.float64).reshape(1)
    dist.all_reduce(t)
    return t[0] / dist.get_world_size()


def rank_seed(seed: int, epoch: int) -> int:
    """The seed of this rank's own random numbers (RReLU noise) in ``epoch``.

    Ranks must draw different noise (identical noise on every slice would correlate them),
    and reseeding every epoch from ``(seed, epoch, rank)`` lets a resumed run on any number
    of ranks draw what an uninterrupted run on that many ranks would.
    """
    rank = dist.get_rank() if _active() else 0
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, rank, 0xADAC7]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed torch's global RNG with :func:`rank_seed` on a rank of a torchrun job; no-op in one process."""
    if _active():
        torch.manual_seed(rank_seed(seed, epoch))


def shard() -> dict[str, int]:
    """``rank`` and ``world_size`` for :class:`adact.data.DeviceLoader`: this rank's slice of each batch."""
    if not _active():
        return {"rank": 0, "world_size": 1}
    return {"rank": dist.get_rank(), "world_size": dist.get_world_size()}


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks that gradients flow through: the gradient of a sum is the sum of gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        g = grad.contiguous().clone()
        dist.all_reduce(g)
        return g


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the global batch of all ranks.

    torch's ``SyncBatchNorm`` runs on GPUs only; this one all-reduces ``(count, sum, sum of
    squares)`` with a differentiable all-reduce, so gradients flow
    through the global statistics exactly as in one process with the whole batch. Evaluation
    uses the running statistics, like any BatchNorm. Its state dict is BatchNorm2d's.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _active()):
            return super().forward(x)
        c = x.shape[1]
        # float64 sums: the variance is E[x^2] - mean^2, which cancels badly in float32 when
        # |mean| is large against the spread.
        local = torch.cat([
            torch.full((1,), float(x.numel() // c), dtype=torch.float64, device=x.device),
            x.sum((0, 2, 3), dtype=torch.float64),
            (x * x).sum((0, 2, 3), dtype=torch.float64),
        ])
        total = _AllReduceSum.apply(local)
        n = total[0].detach()
        mean64 = total[1:1 + c] / n
        var = (total[1 + c:] / n - mean64 * mean64).clamp_min(0).to(x.dtype)  # biased, as BatchNorm normalises
        mean = mean64.to(x.dtype)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * float(n / (n - 1).clamp_min(1))
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = (x - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        new = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        # The same Parameter objects, so an optimiser built before the conversion still steps them.
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers of ``model`` synchronised over the ranks; the same model in one process."""
    if not _active():
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel on this rank's device; unchanged in a single process.

    DDP copies rank 0's parameters and buffers to every rank here, so all ranks start equal.
    """
    if not _active():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP: evaluation runs it directly, since its ranks see different batch counts."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return model.module if isinstance(model, DDP) else model


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Per-rank BatchNorm updates its statistics from its own slice; broadcasting them before
    evaluation makes every rank evaluate the model rank 0 saves in its checkpoints.
    """
    if not _active():
        return
    for b in unwrap(model).buffers():
        if b.device.type == _comm_device.type:
            dist.broadcast(b, src=0)
        else:
            t = b.to(_comm_device)
            dist.broadcast(t, src=0)
            b.copy_(t)


def silence_non_writers() -> None:
    """Send the standard output of ranks other than 0 to /dev/null (errors on stderr stay)."""
    if env().is_writer:
        return
    sys.stdout.flush()
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


@contextlib.contextmanager
def as_writer(cm: contextlib.AbstractContextManager[Any]) -> Iterator[None]:
    """Enter ``cm`` (a folder lock) on the writer only; the other ranks never touch the folder."""
    if writer():
        with cm:
            yield
    else:
        yield


def peer_failure_message(e: BaseException) -> str | None:
    """A one-line explanation when ``e`` means another rank died or stopped answering, else None."""
    if not _active() and not env().enabled:
        return None
    names = {"DistBackendError", "DistNetworkError", "DistStoreError", "DistError"}
    text = str(e)
    lost = type(e).__name__ in names or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                            "timed out", "Timed out", "NCCL", "Gloo", "gloo"))
    if not lost:
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    # gloo prefixes its source location and appends advice; the reason in between is what helps.
    first = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", first).split(". ")[0][:200]
    return (f"rank {env().rank}: lost another rank of the torchrun job ({first}); every rank stops. "
            f"Rerun the same command to resume from the last checkpoint")


def job_device_index(worker: int, devices: int) -> int:
    """The GPU of ``adact reproduce --jobs`` worker number ``worker``: round-robin over ``devices``."""
    return worker % max(devices, 1)
