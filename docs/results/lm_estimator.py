"""nanoGPT's loss estimate beside adact's whole-split loss, on the GELU baselines of the language-model search.

nanoGPT reports ``estimate_loss()``: the mean over ``eval_iters`` random batches (12 windows of 64
tokens each) of its validation split. adact evaluates every non-overlapping block of the same
split once. This script loads each seed's baseline ``best.pt`` (kept in runs/, not published) and
prints both, with the spread of nanoGPT's estimate over 100 draws, so the anchor comparison in
docs/RESULTS.md is like for like.

    python docs/results/lm_estimator.py runs/lm-shakespeare ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adact.data.text import TokenBlocks, load_text
from adact.training.build import load_checkpoint


@torch.no_grad()
def main(out: str, text: str, eval_iters: int = 20, draws: int = 100) -> None:
    torch.set_num_threads(1)
    data = load_text(text)
    for run in sorted(Path(out).glob("*/seed*/baseline/best.pt")):
        model, _ = load_checkpoint(run)
        model.eval()
        total, n = 0.0, 0
        for x, y in TokenBlocks(data.test, 64, 500):
            total += float(F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum"))
            n += y.numel()
        g = torch.Generator().manual_seed(0)
        estimates = []
        for _ in range(draws):
            losses = []
            for _ in range(eval_iters):  # nanoGPT's get_batch("val") and estimate_loss()
                ix = torch.randint(len(data.test) - 64, (12,), generator=g)
                x = torch.stack([data.test[i:i + 64] for i in ix])
                y = torch.stack([data.test[i + 1:i + 65] for i in ix])
                losses.append(float(F.cross_entropy(model(x).flatten(0, 1), y.flatten())))
            estimates.append(np.mean(losses))
        e = np.array(estimates)
        print(f"{run.parent.parent.name}: whole split {total / n:.4f}; nanoGPT's estimate ({eval_iters} batches) "
              f"mean {e.mean():.4f}, sd {e.std(ddof=1):.4f}, 95% of draws in [{np.quantile(e, 0.025):.4f}, "
              f"{np.quantile(e, 0.975):.4f}]")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
