"""Batches straight from a device-resident uint8 split: shuffle, augment and normalise on the device."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from adact.data.arrays import ArrayDataset
from adact.errors import UserError

__all__ = ["DeviceLoader"]

# Distinct streams for the two kinds of randomness, so turning augmentation on or off never
# changes the shuffle order of an epoch.
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch, stream) into a well-spread 64-bit seed; plain seed + epoch
    # would make (seed=0, epoch=1) and (seed=1, epoch=0) identical.
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, stream]).generate_state(2)
    g = torch.Generator(device="cpu")
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g


def _per_channel(value: float | Sequence[float], channels: int, what: str) -> list[float]:
    vals = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise UserError(f"{what} needs 1 or {channels} values (one per channel), got {len(vals)}")
    return vals


def _shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``rank`` among ``world`` in a batch of ``n`` (torch.tensor_split's split)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class DeviceLoader:
    r"""Iterate normalised ``(x, y)`` batches of an :class:`ArrayDataset` on ``device``.

    The whole uint8 split is copied to ``device`` once, here; a batch is then one
    ``index_select``, optional augmentation and a fused normalisation, all on the device, so
    the loader never limits training speed.

    Args:
        ds: the split to iterate.
        batch_size: samples per batch.
        shuffle: visit the samples in a new random order every epoch. Default: False.
        seed: seed of the shuffle order and augmentation. Default: 0.
        device: where batches are produced. Default: ``"cpu"``.
        mean, std: per-channel normalisation ``(x / 255 - mean) / std``; one value or one per
            channel. Default: 0.5 and 0.5 (the paper's), which maps pixels to [-1, 1].
        hflip: flip each image horizontally with probability 1/2. Default: False.
        crop_padding: zero-pad each side by this many pixels and take a random crop of the
            original size (``RandomCrop(size, padding=p)``); 0 disables it. Default: 0.
        drop_last: drop the last batch if it is smaller than ``batch_size``. Default: False.
        workers: for a :class:`~adact.data.imagefolder.FileSplit` (images left on disk), the
            ``DataLoader`` worker processes that decode them. Default: 2.
        rank, world_size: data parallelism (``adact.training.distributed``): every rank walks the same
            global batches of ``batch_size`` in the same order and yields only its contiguous
            slice of each (sizes differ by at most one; a rank may get an empty slice of a short
            last batch). Augmentation is drawn for the whole global batch, so the samples are
            augmented exactly as in one process. :attr:`global_batch` is the size of the whole
            batch last yielded. Default: 0 and 1 (no sharding).

    Epochs and reproducibility: the order and augmentation of epoch ``e`` depend only on
    ``(seed, e)``, so a resumed run sees exactly the batches an uninterrupted one would. Call
    :meth:`set_epoch` before iterating; without it, each new iteration moves on to the next
    epoch (starting at 0), so a plain ``for epoch ...: for x, y in loader`` still reshuffles.

    Example::

        >>> loader = DeviceLoader(splits.train, 64, shuffle=True, seed=0, device="cuda")
        >>> for epoch in range(1, 16):
        ...     loader.set_epoch(epoch)
        ...     for x, y in loader:  # x: float32 (B, C, H, W) in [-1, 1], y: int64 (B,)
        ...         ...
    """

    def __init__(self, ds: ArrayDataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 device: str | torch.device = "cpu", mean: float | Sequence[float] = 0.5,
                 std: float | Sequence[float] = 0.5, hflip: bool = False, crop_padding: int = 0,
                 drop_last: bool = False, workers: int = 2, rank: int = 0,
                 world_size: int = 1) -> None:
        from adact.data.imagefolder import FileSplit

        if not isinstance(ds, (ArrayDataset, FileSplit)):
            raise TypeError(f"DeviceLoader needs an adact.data.ArrayDataset or FileSplit, got {type(ds).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise UserError(f"crop_padding must be a non-negative integer, got {crop_padding!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        channels = int(ds.image_shape[0])
        means = _per_channel(mean, channels, "mean")
        stds = _per_channel(std, channels, "std")
        if any(s <= 0 for s in stds):
            raise UserError(f"std must be positive, got {stds}")

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.hflip = hflip
        self.crop_padding = crop_padding
        self.drop_last = drop_last
        # Images left on disk are decoded per batch by DataLoader workers, in the same order an
        # in-memory split would be read; everything after decoding is shared.
        self.files = ds if isinstance(ds, FileSplit) else None
        self.workers = workers
        self.n = len(ds)
        self.x = ds.x.to(self.device) if isinstance(ds, ArrayDataset) else None
        self.rank, self.world_size = rank, world_size
        self.global_batch = 0
        self.y = ds.y.to(self.device)
        # (x/255 - m)/s computed as (x - 255 m) / (255 s): with the default 0.5/0.5 every step is
        # exact, so pixels 0 and 255 land exactly on -1 and 1 (a multiply by 1/127.5 would not).
        self._offset = torch.tensor([255.0 * m for m in means], device=self.device).view(1, -1, 1, 1)
        self._denom = torch.tensor([255.0 * s for s in stds], device=self.device).view(1, -1, 1, 1)
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch`` (its order and augmentation)."""
        self._epoch = int(epoch)

    def __len__(self) -> int:
        n = self.n
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        n = self.n
        if self.shuffle:
            order = torch.randperm(n, generator=_generator(self.seed, epoch, _SHUFFLE_STREAM)).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        # Random numbers are drawn on the CPU so an epoch is identical on every device.
        aug_gen = _generator(self.seed, epoch, _AUGMENT_STREAM) if (self.hflip or self.crop_padding) else None
        batches = [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(len(self))]
        # Every rank walks the same global batches; each keeps (and, for files, decodes) only its
        # contiguous slice, so sharding never changes which samples a global step sees.
        bounds = [_shard_bounds(int(b.numel()), self.world_size, self.rank) for b in batches]
        shards = [b[lo:hi] for b, (lo, hi) in zip(batches, bounds)]
        decoded = self._decoded(shards) if self.files is not None else None
        for whole, idx, (lo, _) in zip(batches, shards, bounds):
            self.global_batch = full = int(whole.numel())
            x = self.x.index_select(0, idx) if decoded is None else next(decoded).to(self.device)
            if aug_gen is not None:
                x = self._augment(x, aug_gen, full, lo)
            yield x.float().sub_(self._offset).div_(self._denom), self.y.index_select(0, idx)

    def _decoded(self, batches: list[Tensor]) -> Iterator[Tensor]:
        from torch.utils.data import DataLoader

        assert self.files is not None
        # A rank's slice of a short last batch may be empty; the DataLoader cannot collate an
        # empty batch, so those are produced here as empty uint8 images instead.
        loader = DataLoader(self.files, batch_sampler=[b.cpu().tolist() for b in batches if b.numel()],
                            num_workers=self.workers, persistent_workers=False)
        full = (x for x, _ in loader)
        empty = torch.empty((0, *self.files.image_shape), dtype=torch.uint8)
        return (next(full) if b.numel() else empty for b in batches)

    def _augment(self, x: Tensor, gen: torch.Generator, full: int, lo: int) -> Tensor:
        # Draws cover the whole global batch of ``full`` samples in the single-process order;
        # this rank keeps rows ``lo:lo + len(x)``.
        bsz, ch, h, w = x.shape
        keep = slice(lo, lo + bsz)
        if self.hflip:
            flip = (torch.rand(full, generator=gen) < 0.5)[keep].to(self.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if self.crop_padding:
            p = self.crop_padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))  # zero fill, like RandomCrop(padding=p)
            top = torch.randint(0, 2 * p + 1, (full,), generator=gen)[keep].to(self.device)
            left = torch.randint(0, 2 * p + 1, (full,), generator=gen)[keep].to(self.device)
            rows = (top.view(-1, 1) + torch.arange(h, device=self.device)).view(bsz, 1, h, 1)
            cols = (left.view(-1, 1) + torch.arange(w, device=self.device)).view(bsz, 1, 1, w)
            bi = torch.arange(bsz, device=self.device).view(bsz, 1, 1, 1)
            ci = torch.arange(ch, device=self.device).view(1, ch, 1, 1)
            x = padded[bi, ci, rows, cols]
        return x
