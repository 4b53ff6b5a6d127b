"""Recommender evaluation: DVBPR's AUC protocol, vectorised over users, and (SIMULATED-only) oracle agreement.

* **sampled AUC** (official DVBPR code): per user, the held-out item vs ``n_negatives`` (100) items
  drawn uniformly from the items the user never bought (train, validation and test purchases are
  all excluded); AUC_u = P(s(pos) > s(neg)) + 0.5 P(tie); averaged over users.
* **full AUC**: the same against every item the user never bought.
* **cold**: the same, restricted to users whose held-out item has no training interaction
  (negatives as above); ``full_auc_cold_vs_cold`` also restricts the negatives to cold items, i.e.
  ranking among new arrivals only (there popularity is a tie = 0.5 by construction).

A scorer maps user indices (B,) to scores over all items (B, N). Negatives are drawn once per seed
and shared by every scorer, so models are compared on the same triples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Scorer = Callable[[np.ndarray], np.ndarray]


def purchased_mask(interactions: Any, users: np.ndarray) -> np.ndarray:
    """(B, N) bool: item bought by the user (train, validation or test)."""
    mask = np.zeros((len(users), interactions.n_items), dtype=bool)
    for row, u in enumerate(users):
        mask[row, interactions.train[u]] = True
    mask[np.arange(len(users)), interactions.validation[users]] = True
    mask[np.arange(len(users)), interactions.test[users]] = True
    return mask


def user_chunk(n_items: int, cap: int, cells: int = 1 << 22) -> int:
    """Users per chunk of a (users, items) matrix: at most ``cap``, and ~``cells`` entries whatever the catalogue size."""
    return max(1, min(cap, cells // max(n_items, 1)))


def sample_negatives(interactions: Any, n_negatives: int = 100, seed: int = 0, chunk: int | None = None) -> np.ndarray:
    """(U, n_negatives) items each user never bought, uniform with replacement, deterministic per seed
    (whatever ``chunk``, the users per purchase mask; default: bounded memory for any catalogue)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = interactions.n_users, interactions.n_items
    chunk = chunk or user_chunk(n_items, 1024, 1 << 24)
    cand = rng.integers(0, n_items, size=(n_users, 3 * n_negatives))
    out = np.empty((n_users, n_negatives), dtype=np.int64)
    for start in range(0, n_users, chunk):
        users = np.arange(start, min(n_users, start + chunk))
        bought = purchased_mask(interactions, users)
        c = cand[users]
        ok = ~bought[np.arange(len(users))[:, None], c]
        for row, u in enumerate(users):
            good = c[row][ok[row]]
            while len(good) < n_negatives:  # very rare: a user who bought most of the catalogue
                extra = rng.integers(0, n_items, size=n_negatives)
                good = np.concatenate([good, extra[~bought[row, extra]]])
            out[u] = good[:n_negatives]
    return out


def _auc_rows(pos: np.ndarray, neg: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-row AUC of pos (B,) vs neg (B, M), optionally only over ``valid`` (B, M) columns."""
    less = neg < pos[:, None]
    tie = neg == pos[:, None]
    if valid is None:
        return less.mean(axis=1) + 0.5 * tie.mean(axis=1)
    n = np.maximum(valid.sum(axis=1), 1)
    return ((less & valid).sum(axis=1) + 0.5 * (tie & valid).sum(axis=1)) / n


def evaluate_scorer(
    scorer: Scorer,
    interactions: Any,
    negatives: np.ndarray,
    *,
    target: str = "test",
    chunk: int | None = None,
) -> dict[str, Any]:
    """Sampled and full AUC, on all users and on users whose ``target`` item is cold.

    ``negatives`` comes from :func:`sample_negatives`; ``target`` is "test" or "validation";
    ``chunk`` users are scored at a time (default: ~4M scores, whatever the catalogue size).
    """
    items = {"test": interactions.test, "validation": interactions.validation}[target]
    chunk = chunk or user_chunk(interactions.n_items, 512)
    n_users = interactions.n_users
    cold = np.zeros(interactions.n_items, dtype=bool)
    cold[interactions.cold_items()] = True
    sampled = np.empty(n_users)
    full = np.empty(n_users)
    full_cc = np.empty(n_users)
    for start in range(0, n_users, chunk):
        users = np.arange(start, min(n_users, start + chunk))
        scores = np.asarray(scorer(users), dtype=np.float64)
        rows = np.arange(len(users))
        pos = scores[rows, items[users]]
        sampled[users] = _auc_rows(pos, scores[rows[:, None], negatives[users]])
        unbought = ~purchased_mask(interactions, users)
        full[users] = _auc_rows(pos, scores, unbought)
        full_cc[users] = _auc_rows(pos, scores, unbought & cold[None, :])
    is_cold = cold[items]
    return {
        "target": target,
        "n_users": int(n_users),
        "n_cold_users": int(is_cold.sum()),
        "n_negatives": int(negatives.shape[1]),
        "sampled_auc": float(sampled.mean()),
        "full_auc": float(full.mean()),
        "sampled_auc_cold": float(sampled[is_cold].mean()) if is_cold.any() else float("nan"),
        "full_auc_cold": float(full[is_cold].mean()) if is_cold.any() else float("nan"),
        "full_auc_cold_vs_cold": float(full_cc[is_cold].mean()) if is_cold.any() else float("nan"),
    }


def sampled_auc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """Mean over rows of P(pos > neg) + 0.5 P(tie) for pos (U,) and neg (U, M)."""
    return float(_auc_rows(np.asarray(pos_scores, np.float64), np.asarray(neg_scores, np.float64)).mean())


def oracle_scorer(oracle: Any, catalogue: Any) -> Scorer:
    """The SIMULATED planted utility as a scorer (an upper reference under the same protocol)."""
    style, affinity = oracle.item_signals(catalogue.images, catalogue.category)
    cats = np.asarray(catalogue.category)
    return lambda users: oracle.utility_from_signals(users, style, affinity, cats)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inv = np.unique(x, return_inverse=True)  # ties get their mean rank
    return (np.bincount(inv, ranks) / np.bincount(inv))[inv]


def oracle_agreement(
    scorer: Scorer, oracle: Any, catalogue: Any, *, n_users: int = 200, n_items: int = 1000, seed: int = 0
) -> dict[str, float]:
    """SIMULATED-only: per-user Spearman correlation of learned scores with the planted utility.

    ``n_users`` random users x ``n_items`` random catalogue items; also the mean over users of
    the pairwise concordance (AUC of the learned score at ordering random item pairs as the oracle does).
    """
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(oracle.n_users, size=min(n_users, oracle.n_users), replace=False))
    items = rng.choice(len(catalogue.images), size=min(n_items, len(catalogue.images)), replace=False)
    learned = np.asarray(scorer(users), dtype=np.float64)[:, items]
    truth = oracle.utility(users, catalogue.images[items], np.asarray(catalogue.category)[items]).astype(np.float64)
    rho, conc = [], []
    a, b = rng.integers(0, len(items), size=(2, 2000))
    for lr, tr in zip(learned, truth):
        ra, rb = _average_ranks(lr), _average_ranks(tr)
        ra, rb = ra - ra.mean(), rb - rb.mean()
        den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
        rho.append(float((ra * rb).sum() / den) if den > 0 else 0.0)
        dl, dt = np.sign(lr[a] - lr[b]), np.sign(tr[a] - tr[b])
        keep = dt != 0
        conc.append(float(np.mean(np.where(dl[keep] == 0, 0.5, dl[keep] == dt[keep]))))
    return {
        "spearman_mean": float(np.mean(rho)),
        "pairwise_concordance": float(np.mean(conc)),
        "n_users": len(users),
        "n_items": len(items),
        "simulated": True,
    }
