"""DVBPR user vectors: the trained table (one file per item encoder version) and fold-in of new users.

A table is ``<dir>/item_encoder_v<N>.npz`` written by the ``export`` subcommand of couturier with arrays ``user_ids``,
``theta (U,K)``, ``purchased_indptr`` + ``purchased_product_ids`` (training purchases, CSR) and
``item_mean (K,)`` (mean item vector of the training catalogue).

Fold-in (beyond the DVBPR paper): a user without a trained vector but with liked products gets
``theta = s * d / |d|`` with ``d = mean(Phi liked) - item_mean``. That is the direction of the first
BPR gradient step from theta = 0 against uniformly sampled negatives; ``s`` is the median norm of
the trained vectors, so folded-in scores live on the same scale as trained ones.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from couturier.services.common.errors import InvalidInput, PreconditionFailed, UnknownEntity
from couturier.services.common.models import ITEM_ENCODER


@dataclass(frozen=True)
class UserTable:
    """Trained user vectors of one item encoder version."""

    version: str
    user_ids: np.ndarray  # (U,) str
    theta: np.ndarray  # (U, K) float32
    purchased_indptr: np.ndarray  # (U+1,) int64
    purchased_product_ids: np.ndarray  # (nnz,) str
    item_mean: np.ndarray  # (K,) float32
    index: dict[str, int]
    fold_in_scale: float

    @classmethod
    def load(cls, path: Path, version: str) -> UserTable:
        with np.load(path, allow_pickle=False) as data:
            missing = {"user_ids", "theta", "purchased_indptr", "purchased_product_ids", "item_mean"} - set(data.files)
            if missing:
                raise PreconditionFailed(
                    f"user vectors {path} lack {sorted(missing)}; re-run the export subcommand of couturier"
                )
            user_ids = data["user_ids"].astype(str)
            theta = data["theta"].astype(np.float32)
            table = cls(
                version=version,
                user_ids=user_ids,
                theta=theta,
                purchased_indptr=data["purchased_indptr"].astype(np.int64),
                purchased_product_ids=data["purchased_product_ids"].astype(str),
                item_mean=data["item_mean"].astype(np.float32),
                index={user: row for row, user in enumerate(user_ids)},
                fold_in_scale=float(np.median(np.linalg.norm(theta, axis=1))) if len(theta) else 1.0,
            )
        if (
            table.theta.ndim != 2
            or len(table.theta) != len(table.user_ids)
            or table.item_mean.shape != table.theta.shape[1:]
        ):
            raise PreconditionFailed(
                f"user vectors {path} have inconsistent shapes; re-run the export subcommand of couturier"
            )
        return table

    @property
    def dim(self) -> int:
        return int(self.theta.shape[1])

    def vector(self, user_id: str) -> np.ndarray | None:
        row = self.index.get(user_id)
        return None if row is None else self.theta[row]

    def purchased(self, user_id: str) -> list[str]:
        row = self.index.get(user_id)
        if row is None:
            return []
        ids: list[str] = self.purchased_product_ids[
            self.purchased_indptr[row] : self.purchased_indptr[row + 1]
        ].tolist()
        return ids

    def fold_in(self, liked_vectors: np.ndarray, user_id: str) -> np.ndarray:
        """A vector for a user known only by the item vectors of products they liked."""
        direction = liked_vectors.astype(np.float64).mean(axis=0) - self.item_mean
        norm = float(np.linalg.norm(direction))
        if not np.isfinite(norm) or norm < 1e-8:
            raise InvalidInput(
                f"user {user_id!r}: the liked products are indistinguishable from an average product; "
                "send other liked_product_ids"
            )
        theta: np.ndarray = (self.fold_in_scale * direction / norm).astype(np.float32)
        return theta


class UserDirectory:
    """Loads ``item_encoder_v<N>.npz`` per version on first use and keeps it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._tables: dict[str, UserTable] = {}
        self._lock = threading.Lock()

    def path(self, version: str) -> Path:
        return self.folder / f"{ITEM_ENCODER}_v{version}.npz"

    def table(self, version: str) -> UserTable:
        with self._lock:
            table = self._tables.get(version)
            if table is None:
                path = self.path(version)
                if not path.is_file():
                    raise PreconditionFailed(
                        f"no user vectors for {ITEM_ENCODER} v{version} ({path} is missing); publish them with "
                        "the export subcommand of couturier, or pin the scoring service to a version that has them"
                    )
                table = self._tables[version] = UserTable.load(path, version)
            return table


def unknown_users_error(user_ids: Sequence[str]) -> UnknownEntity:
    shown = ", ".join(repr(u) for u in list(user_ids)[:10])
    return UnknownEntity(
        f"unknown users without liked products: {shown}; send liked_product_ids so they can be folded in"
    )
