"""Implicit feedback (purchases) split per the DVBPR protocol: per user, train items plus one
validation and one test item."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from couturier.export.data.errors import DataFormatError
from couturier.export.data.stored import load_stored, save_stored


@dataclass
class Interactions:
    """Purchases of ``n_users`` users over ``n_items`` catalogue rows.

    ``train[u]`` holds the item indices user ``u`` bought for training; ``validation[u]`` and
    ``test[u]`` are one held-out item each. ``metadata`` says where the data came from
    (simulated shoppers or a real data set).
    """

    n_users: int
    n_items: int
    user_ids: np.ndarray  # (U,) str
    train: list[np.ndarray]
    validation: np.ndarray  # (U,) int64
    test: np.ndarray  # (U,) int64
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train = [np.asarray(t, dtype=np.int64) for t in self.train]
        self.validation = np.asarray(self.validation, dtype=np.int64)
        self.test = np.asarray(self.test, dtype=np.int64)
        u = self.n_users
        if len(self.user_ids) != u or len(self.train) != u or self.validation.shape != (u,) or self.test.shape != (u,):
            raise DataFormatError(
                f"interactions for {u} users need {u} user ids, train lists, validation and test items; got "
                f"{len(self.user_ids)}, {len(self.train)}, {self.validation.shape}, {self.test.shape}"
            )
        everything = np.concatenate([*self.train, self.validation, self.test]) if u else np.zeros(0, np.int64)
        if everything.size and (everything.min() < 0 or everything.max() >= self.n_items):
            raise DataFormatError(f"interaction item index out of range 0..{self.n_items - 1}")

    @property
    def n_train(self) -> int:
        """Number of training (user, item) pairs."""
        return int(sum(len(t) for t in self.train))

    def train_pairs(self) -> np.ndarray:
        """(M, 2) int64 array of training (user, item) pairs."""
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), [len(t) for t in self.train])
        items = np.concatenate(self.train) if self.train else np.zeros(0, np.int64)
        return np.stack([users, items], axis=1)

    def cold_items(self) -> np.ndarray:
        """Item indices with no training interaction (DVBPR's cold-start evaluation items)."""
        seen = np.zeros(self.n_items, dtype=bool)
        for t in self.train:
            seen[t] = True
        return np.flatnonzero(~seen)

    def to_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, item, split) rows, user by user: the train items, then the validation, then the test item.

        ``split`` uses the dataset-folder codes (int8: 0 train, 1 validation, 2 test)."""
        sizes = np.array([len(t) + 2 for t in self.train], dtype=np.int64)
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), sizes)
        items = np.concatenate(
            [np.concatenate([t, [v, s]]) for t, v, s in zip(self.train, self.validation, self.test)]
            if self.n_users
            else [np.zeros(0, np.int64)]
        ).astype(np.int64)
        split = np.concatenate(
            [np.r_[np.zeros(len(t), np.int8), np.int8(1), np.int8(2)] for t in self.train]
            if self.n_users
            else [np.zeros(0, np.int8)]
        ).astype(np.int8)
        return users, items, split

    @classmethod
    def from_rows(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        split: np.ndarray,
        *,
        user_ids: np.ndarray,
        n_items: int,
        metadata: dict[str, Any] | None = None,
    ) -> Interactions:
        """Interactions from (user, item, split) rows (split codes 0 train, 1 validation, 2 test).

        Every user needs exactly one validation and one test row (train rows may be none); train lists
        keep the rows' order.
        """
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        split = np.asarray(split)
        n_users = len(user_ids)
        held: dict[str, np.ndarray] = {}
        for code, name in ((1, "validation"), (2, "test")):
            rows = np.flatnonzero(split == code)
            counts = np.bincount(users[rows], minlength=n_users)
            bad = np.flatnonzero(counts != 1)
            if bad.size:
                u = int(bad[0])
                raise DataFormatError(
                    f"{bad.size} users do not have exactly one {name} interaction "
                    f"(first: {user_ids[u]!s} has {int(counts[u])})"
                )
            out = np.empty(n_users, dtype=np.int64)
            out[users[rows]] = items[rows]
            held[name] = out
        train_rows = np.flatnonzero(split == 0)
        order = train_rows[np.argsort(users[train_rows], kind="stable")]
        bounds = np.searchsorted(users[order], np.arange(n_users + 1))
        train = [items[order[bounds[u] : bounds[u + 1]]] for u in range(n_users)]
        return cls(
            n_users=n_users,
            n_items=int(n_items),
            user_ids=np.asarray(user_ids, dtype=str),
            train=train,
            validation=held["validation"],
            test=held["test"],
            metadata=dict(metadata or {}),
        )

    def save(self, directory: Path | str, name: str = "interactions") -> Path:
        """Write ``<name>.npz`` (CSR train lists, validation, test, user ids) and ``<name>.json``."""
        indptr = np.concatenate([[0], np.cumsum([len(t) for t in self.train])]).astype(np.int64)
        arrays = {
            "user_ids": np.asarray(self.user_ids, dtype=str),
            "train_indptr": indptr,
            "train_indices": self.train_pairs()[:, 1],
            "validation": self.validation,
            "test": self.test,
        }
        meta = {"n_users": self.n_users, "n_items": self.n_items, "metadata": self.metadata}
        return save_stored(directory, name, arrays, meta)

    @classmethod
    def load(cls, directory: Path | str, name: str = "interactions") -> Interactions:
        """Read interactions written by :meth:`save`."""
        data, meta = load_stored(directory, name, f"interactions '{name}'")
        indptr, indices = data["train_indptr"], data["train_indices"]
        return cls(
            n_users=int(meta["n_users"]),
            n_items=int(meta["n_items"]),
            user_ids=data["user_ids"],
            train=[indices[indptr[u] : indptr[u + 1]] for u in range(len(indptr) - 1)],
            validation=data["validation"],
            test=data["test"],
            metadata=meta.get("metadata", {}),
        )
