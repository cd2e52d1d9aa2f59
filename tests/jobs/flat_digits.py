"""Digits as flat 64-feature rows (for the Linear-heavy MLP in the optimize tests), and
evaluation functions that are wrong on purpose."""

from __future__ import annotations

import numpy as np

from jobs.digits.data import load_split


def train_data(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_split(seed)[0]
    return x.reshape(len(x), 64), y


def eval_data(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_split(seed)[1]
    return x.reshape(len(x), 64), y


def mismatched() -> tuple[np.ndarray, np.ndarray]:
    x, y = eval_data()
    return x, y[:-1]


def not_a_pair() -> np.ndarray:
    return eval_data()[0]


def broken() -> tuple[np.ndarray, np.ndarray]:
    raise FileNotFoundError("/data/digits.npz")
