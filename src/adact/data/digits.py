"""scikit-learn's bundled 8x8 handwritten digits, upsampled to 16x16: the offline default.

The data ships inside scikit-learn, so it works with no files and no network. At 8x8 the
paper's 4-block ConvNet (four 2x2 max-pools) would shrink the maps below 1 pixel, so the images
are resized to 16x16 (bilinear) after scaling the 0..16 intensities to 0..255. There is no
official split; a fixed stratified 80/20 split with seed 0 gives 1,437 train / 360 test.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from adact.data.arrays import RawSplits, as_split, stratified_split

__all__ = ["DIGITS_SIZE", "load_digits"]

DIGITS_SIZE = 16
_SPLIT_SEED = 0  # fixed: a benchmark's test set must not move with the run's seed
_TEST_FRACTION = 0.2


def load_digits() -> RawSplits:
    from sklearn.datasets import load_digits as sk_load_digits  # deferred: sklearn import is slow

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1) * (255.0 / 16.0)
    images = F.interpolate(images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = images.round().clamp_(0, 255).to(torch.uint8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = stratified_split(y, _TEST_FRACTION, _SPLIT_SEED, what="test split")
    full = as_split(x, y)
    info = {"source": "sklearn.datasets.load_digits (bundled with scikit-learn)",
            "protocol": f"fixed stratified {1 - _TEST_FRACTION:.0%}/{_TEST_FRACTION:.0%} split, seed {_SPLIT_SEED}",
            "notes": ["8x8 images scaled from 0..16 to 0..255 and resized to 16x16 (bilinear)"]}
    return full.subset(train_idx), full.subset(test_idx), [str(d) for d in range(10)], info
