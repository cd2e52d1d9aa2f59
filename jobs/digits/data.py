"""scikit-learn's bundled digits (1,797 8x8 images, no download), split once and for all.

The held-out split is a pure function of the seed, so the optimization step can evaluate a
candidate on exactly the test set its source model never saw.
"""

from __future__ import annotations

import numpy as np

TEST_FRACTION = 0.2


def load_split(seed: int = 7) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((x_train, y_train), (x_test, y_test))``: images as float32 (N, 1, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)
    return (x_train, y_train), (x_test, y_test)


def eval_data(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """The held-out split alone (``module:function`` form for evaluation tools)."""
    return load_split(seed)[1]


def train_data(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """The training split alone (e.g. for a short fine-tune after pruning)."""
    return load_split(seed)[0]
