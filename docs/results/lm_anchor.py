"""An independent check of the language-model numbers: nanoGPT's training loop, written out plainly.

It uses only adact's GPT and text loader, not its training loop, task, optimizer groups or
schedule, so a bug there would show up as a difference from ``adact search``'s baselines. The
settings are nanoGPT's shakespeare_char CPU run: 4 layers, 4 heads, 128-dim embeddings, context
64, batch 12, 2000 steps, AdamW (0.9, 0.99), lr 1e-3 with 100 warm-up steps (nanoGPT's
``(it + 1) / (warmup + 1)``) and cosine decay to 1e-4, weight decay 0.1 on 2-D weights only,
gradient clipping at 1.0, dropout 0. Prints the loss over every block of the held-out 10%.

    python docs/results/lm_anchor.py ../shared/data/tinyshakespeare.txt gelu 1337
"""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F

from adact.data.text import TokenBlocks, load_text
from adact.gpt import GPT


def lr_at(it: int, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100, decay_iters: int = 2000) -> float:
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def main(path: str, activation: str = "gelu", seed: int = 1337, iters: int = 2000) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = load_text(path)
    model = GPT(data.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, activation=activation)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(seed)
    t0 = time.process_time()
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = lr_at(it)
        ix = torch.randint(len(data.train) - 64, (12,), generator=g)
        x = torch.stack([data.train[i:i + 64] for i in ix])  # (12, 64)
        y = torch.stack([data.train[i + 1:i + 65] for i in ix])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in TokenBlocks(data.test, 64, 500):
            total += float(F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum"))
            n += y.numel()
    print(f"{activation} seed {seed}: held-out loss {total / n:.4f} over {n:,} tokens "
          f"({time.process_time() - t0:.0f} s CPU)")


if __name__ == "__main__":
    main(sys.argv[1], *(sys.argv[2:3]), *(int(a) for a in sys.argv[3:4]))
