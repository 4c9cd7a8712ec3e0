"""Text for language modelling: a UTF-8 file as token ids, nanoGPT's split, and the two loaders.

:func:`load_text` reads ``text:PATH`` once into memory as int64 token ids, character-level by
default (the vocabulary is the file's sorted characters, as nanoGPT's ``shakespeare_char``) or
one token per byte (``tokenizer="bytes"``, 256 symbols, any file). The split is nanoGPT's: the
first 90% of the tokens train, the last 10% are held out (:attr:`TextData.test`; nanoGPT calls
it ``val``). ``val_fraction`` carves a validation split for model selection from the end of the
training tokens, so the held-out tokens are never looked at before the end.

:class:`TokenBatches` draws training batches of random windows, as nanoGPT's ``get_batch``;
:class:`TokenBlocks` walks a held-out split in non-overlapping blocks, deterministically, so an
evaluation covers every block exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adact.config import TOKENIZERS
from adact.errors import UserError

__all__ = ["TEST_FRACTION", "TOKENIZERS", "TextData", "TokenBatches", "TokenBlocks", "load_text"]

#: nanoGPT's split: the last 10% of the tokens are held out.
TEST_FRACTION = 0.1


@dataclass
class TextData:
    """A text file as token ids: training, held-out and optional validation tokens, plus provenance.

    Attributes:
        name: the dataset argument (``text:PATH``).
        train, test, val: int64 token ids, shape ``(N,)``; ``test`` is nanoGPT's ``val`` split.
        vocab: the characters of each id (``tokenizer="char"``), or None for bytes (id = byte value).
        info: where the tokens came from (path, sizes, tokenizer).
    """

    name: str
    train: Tensor
    test: Tensor
    val: Tensor | None
    vocab: list[str] | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return 256 if self.vocab is None else len(self.vocab)

    def decode(self, ids: Tensor | list[int]) -> str:
        """The text of token ids (for looking at samples)."""
        seq = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if self.vocab is None:
            return bytes(seq).decode("utf-8", errors="replace")
        return "".join(self.vocab[i] for i in seq)

    def check(self, block_size: int) -> None:
        """Raise UserError unless every split holds at least one whole block and its next-token targets."""
        need = block_size + 1
        for split, tokens in (("training", self.train), ("held-out", self.test), ("validation", self.val)):
            if tokens is not None and len(tokens) < need:
                raise UserError(
                    f"{self.info.get('path', self.name)}: too short for block size {block_size}: its {split} split "
                    f"has {len(tokens):,} tokens (of {self.info.get('tokens', '?'):,} in all), and every split "
                    f"needs at least {need:,}; use a longer file or a smaller --block-size")

    def __repr__(self) -> str:
        val = len(self.val) if self.val is not None else 0
        return (f"TextData(name={self.name!r}, train={len(self.train):,} tokens, val={val:,}, "
                f"test={len(self.test):,}, vocab={self.vocab_size}, tokenizer={self.info.get('tokenizer')})")


def load_text(path: str | Path, tokenizer: str = "char", *, val_fraction: float = 0.0, name: str | None = None
              ) -> TextData:
    """Read a text file as token ids with nanoGPT's 90/10 split.

    Args:
        path: the file.
        tokenizer: ``"char"`` (the file must be UTF-8 text) or ``"bytes"`` (any file). Default: ``"char"``.
        val_fraction: the last fraction of the training tokens held out for validation. Default: 0.
        name: the dataset argument to record (default: ``text:PATH``).

    Raises:
        UserError: an unknown tokenizer, an empty file, or (``char``) a file that is not UTF-8 text.
    """
    path = Path(path)
    if tokenizer not in TOKENIZERS:
        raise UserError(f"unknown tokenizer {tokenizer!r}; valid: {', '.join(TOKENIZERS)}")
    raw = path.read_bytes()
    if not raw:
        raise UserError(f"{path}: the file is empty; a language model needs text to train on")
    if tokenizer == "bytes":
        ids = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).astype(np.int64))
        vocab = None
    else:
        ids, vocab = _characters(raw, path)
    n = len(ids)
    cut = int(n * (1 - TEST_FRACTION))  # nanoGPT: train = data[:int(n * 0.9)], val = data[int(n * 0.9):]
    train, test = ids[:cut], ids[cut:]
    val = None
    if val_fraction > 0:
        keep = int(len(train) * (1 - val_fraction))
        train, val = train[:keep], train[keep:]
    info = {"path": str(path), "tokens": n, "tokenizer": tokenizer, "vocab_size": 256 if vocab is None else len(vocab),
            "split": "first 90% train, last 10% held out (nanoGPT's)",
            "val_fraction": val_fraction}
    return TextData(name or f"text:{path}", train.clone(), test.clone(), None if val is None else val.clone(),
                    vocab, info)


def _characters(raw: bytes, path: Path) -> tuple[Tensor, list[str]]:
    """Character ids of UTF-8 ``raw``: the vocabulary is its sorted distinct characters (code point order)."""
    if b"\x00" in raw[:1 << 20]:
        at = raw.index(b"\x00")
        raise UserError(f"{path}: not a text file (a NUL byte at offset {at:,}); pass --tokenizer bytes to model any "
                        f"file byte by byte")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (an invalid byte at offset {e.start:,}); convert it to UTF-8, or "
                        f"pass --tokenizer bytes to model it byte by byte") from None
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    alphabet, ids = np.unique(points, return_inverse=True)  # sorted code points = Python's sorted(set(text))
    return torch.from_numpy(ids.astype(np.int64)), [chr(int(c)) for c in alphabet]


def _generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence spreads (seed, epoch) over 64 bits: seed + epoch would make (0, 1) and (1, 0) equal.
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, 2]).generate_state(2)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 31 ^ int(state[1]))


def _rank_slice(n: int, world: int, rank: int) -> slice:
    base, extra = divmod(n, world)  # torch.tensor_split's split, as DeviceLoader's
    lo = rank * base + min(rank, extra)
    return slice(lo, lo + base + (1 if rank < extra else 0))


class TokenBatches:
    r"""Training batches of random windows of a token split, as nanoGPT's ``get_batch``.

    Each step draws ``batch_size`` start offsets uniformly from ``[0, N - block_size)`` and
    yields the windows and the same windows shifted by one token. The budget is in steps: epoch
    ``e`` (an evaluation interval) has ``steps`` of them, the last one what remains of
    ``max_steps``. The offsets of epoch ``e`` depend only on ``(seed, e)``, so a resumed run draws
    what an uninterrupted one would.

    Args:
        tokens: int64 ids, shape ``(N,)``.
        block_size: tokens per window.
        batch_size: windows per step (the global batch under torchrun).
        steps: steps per epoch.
        max_steps: steps in all (None: every epoch has ``steps``).
        seed: seed of the offsets. Default: 0.
        device: where batches are produced. Default: ``"cpu"``.
        rank, world_size: under torchrun, every rank draws the same global batch and yields its slice.

    Shape:
        yields ``x, y`` of shape :math:`(B, T)` (int64, ``B = batch_size`` or this rank's slice of it).
    """

    def __init__(self, tokens: Tensor, block_size: int, batch_size: int, steps: int, max_steps: int | None = None, *,
                 seed: int = 0, device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1) -> None:
        if len(tokens) <= block_size:
            raise UserError(f"{len(tokens)} training tokens cannot fill one block of {block_size} and its targets")
        self.tokens = tokens.to(device)
        self.block_size, self.batch_size, self.steps, self.max_steps = block_size, batch_size, steps, max_steps
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.global_batch = batch_size
        self.epoch = 1
        self._offsets = torch.arange(block_size, device=self.tokens.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.max_steps is None:
            return self.steps
        return max(0, min(self.steps, self.max_steps - (self.epoch - 1) * self.steps))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        g = _generator(self.seed, self.epoch)
        mine = _rank_slice(self.batch_size, self.world_size, self.rank)
        for _ in range(len(self)):
            start = torch.randint(len(self.tokens) - self.block_size, (self.batch_size,), generator=g)[mine]
            idx = start.to(self.tokens.device)[:, None] + self._offsets  # (B, T)
            yield self.tokens[idx], self.tokens[idx + 1]


class TokenBlocks:
    r"""A held-out split in non-overlapping blocks, in order: every block once, the same on every call.

    The split's ``N`` tokens give ``(N - 1) // block_size`` blocks (the last few tokens that do not
    fill a block are left out); block ``i`` predicts tokens ``i*T + 1 .. (i+1)*T`` from the ``T``
    before each.

    Args:
        tokens: int64 ids, shape ``(N,)``.
        block_size: tokens per block (``T``).
        batch_size: blocks per batch.
        device: where batches are produced. Default: ``"cpu"``.
        rank, world_size: under torchrun, rank ``r`` yields its slice of every batch.

    Shape:
        yields ``x, y`` of shape :math:`(B, T)`.
    """

    def __init__(self, tokens: Tensor, block_size: int, batch_size: int, *, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1) -> None:
        n = (len(tokens) - 1) // block_size
        if n < 1:
            raise UserError(f"{len(tokens)} held-out tokens cannot fill one block of {block_size} and its targets")
        tokens = tokens.to(device)
        self.x = tokens[: n * block_size].view(n, block_size)  # (N_blocks, T)
        self.y = tokens[1: n * block_size + 1].view(n, block_size)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.global_batch = batch_size

    @property
    def blocks(self) -> int:
        return len(self.x)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: an evaluation walks the blocks in order (the loaders' common interface)."""

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for lo in range(0, len(self.x), self.batch_size):
            x, y = self.x[lo: lo + self.batch_size], self.y[lo: lo + self.batch_size]
            mine = _rank_slice(len(x), self.world_size, self.rank)
            yield x[mine], y[mine]
