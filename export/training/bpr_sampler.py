"""BPR training triples (u, i, j): i a training purchase of u, j a uniformly drawn item u did not buy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class BprSampler:
    """Epochs of shuffled (u, i, j) batches over ``interactions.train_pairs()``, seeded.

    j is uniform over items not in u's training purchases (redrawn until it is; held-out
    purchases are unknown to training and may be drawn, as in the official code).
    """

    def __init__(self, interactions: Any, seed: int = 0) -> None:
        self.pairs = interactions.train_pairs()
        self.n_items = int(interactions.n_items)
        self._codes = np.sort(self.pairs[:, 0] * self.n_items + self.pairs[:, 1])
        self.rng = np.random.default_rng(seed)

    def _bought(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        codes = users * self.n_items + items
        pos = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
        return self._codes[pos] == codes

    def negatives(self, users: np.ndarray) -> np.ndarray:
        """One j per user in ``users``."""
        j = self.rng.integers(0, self.n_items, size=len(users))
        bad = self._bought(users, j)
        while bad.any():
            j[bad] = self.rng.integers(0, self.n_items, size=int(bad.sum()))
            bad = self._bought(users, j)
        return j

    def epoch(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Batches (users, pos, neg) covering every training pair once, in a fresh random order."""
        order = self.rng.permutation(len(self.pairs))
        for start in range(0, len(order), batch_size):
            p = self.pairs[order[start : start + batch_size]]
            yield p[:, 0], p[:, 1], self.negatives(p[:, 0])
