"""SIMULATED shoppers with PLANTED tastes, and their (simulated) purchases.

Each simulated user has three planted tastes:

* category weights (Dirichlet, concentrated on 1-3 of the 6 categories);
* colour affinities (likes 2-3 palette colours, dislikes 2-3 others);
* a hidden visual-style direction ``w_u``, a unit vector in a fixed 16-d style space computed
  from PIXELS (:func:`style_features`), standardised within each category so it expresses a
  preference among garments of the same kind.

Colour and style are measured from pixels (:func:`garment_colour_affinity`,
:func:`style_features`), so the :class:`Oracle` can score ANY image, including generated designs.
Purchases are drawn without replacement with probability ``softmax(utility / temperature)``
(Gumbel-top-k) and split per DVBPR: one validation and one test purchase per user, the rest train.
A seeded share of items are "new arrivals": they may be validation/test purchases but never
training purchases, so the catalogue always has cold items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from couturier.export.data.catalogue import PALETTE_RGB, Catalogue
from couturier.export.data.interactions import Interactions
from couturier.export.data.stored import load_stored, save_stored

__all__ = [
    "ORACLE_FILE",
    "Interactions",
    "Oracle",
    "garment_colour_affinity",
    "oracle_test_auc",
    "simulate_shoppers",
    "style_features",
]

ORACLE_FILE = "oracle_simulated_tastes"  # .npz / .json; evaluation only, never training
STYLE_GRID = 8
STYLE_DIM = 16
STYLE_PROJECTION_SEED = 20_170_905  # fixed: the style space never depends on the simulation seed
# Colourised garments are shaded to 50..100 % of the palette colour and edge pixels blend into
# white; measured on Fashion-MNIST, the mean garment colour is about 0.78 * palette + 0.05.
_SHADE_GAIN, _SHADE_OFFSET = 0.78, 0.05
_COLOUR_SIGMA = 0.07
_CATEGORY_FLOOR = 0.02


def _style_projection() -> np.ndarray:
    rng = np.random.default_rng(STYLE_PROJECTION_SEED)
    return rng.standard_normal((STYLE_GRID * STYLE_GRID, STYLE_DIM)) / STYLE_GRID


def _as_float_rgb(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, S, S, 3), got {arr.dtype} {arr.shape}")
    return arr.astype(np.float32) / 255.0


def _chunked(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Apply ``fn`` to slices of ``images`` (bounded memory) and stack the results."""
    if len(images) <= chunk:
        return fn(images)
    return np.concatenate([fn(images[i : i + chunk]) for i in range(0, len(images), chunk)])


def style_features(images: np.ndarray) -> np.ndarray:
    """(N, 16) float32 style features from pixels.

    "Ink" (1 - luminance, so the white background is 0) is area-downsampled to 8x8, standardised
    per image (shape/texture, not colour darkness), then projected by a fixed seeded random matrix.
    """
    return _chunked(_style_features, images)


def _style_features(images: np.ndarray) -> np.ndarray:
    rgb = _as_float_rgb(images)
    ink = 1.0 - (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    n, s = ink.shape[0], ink.shape[1]
    if s % STYLE_GRID == 0:
        b = s // STYLE_GRID
        small = ink.reshape(n, STYLE_GRID, b, STYLE_GRID, b).mean(axis=(2, 4))
    else:
        small = np.stack(
            [
                np.asarray(Image.fromarray(m, mode="F").resize((STYLE_GRID, STYLE_GRID), Image.Resampling.BOX))
                for m in ink
            ]
        )
    flat = small.reshape(n, -1)
    flat = (flat - flat.mean(axis=1, keepdims=True)) / (flat.std(axis=1, keepdims=True) + 1e-3)
    return (flat @ _style_projection()).astype(np.float32)


def garment_colour_affinity(images: np.ndarray) -> np.ndarray:
    """(N, K) soft match of each garment's colour to the K palette colours (rows sum to 1).

    The garment colour is the mean RGB of non-background pixels (weighted by their distance from
    white), compared with the palette at the typical shading level.
    """
    return _chunked(_colour_affinity, images)


def _colour_affinity(images: np.ndarray) -> np.ndarray:
    rgb = _as_float_rgb(images)
    depth = (1.0 - rgb).max(axis=3)
    weight = np.clip((depth - 0.06) / 0.15, 0.0, 1.0)
    total = weight.sum(axis=(1, 2))
    mean = (rgb * weight[..., None]).sum(axis=(1, 2)) / np.maximum(total, 1e-6)[:, None]
    ref = PALETTE_RGB.astype(np.float32) / 255.0 * _SHADE_GAIN + _SHADE_OFFSET
    d2 = ((mean[:, None, :] - ref[None, :, :]) ** 2).sum(axis=2)
    logits = -d2 / (2 * _COLOUR_SIGMA**2)
    logits -= logits.max(axis=1, keepdims=True)
    aff = np.exp(logits)
    aff /= aff.sum(axis=1, keepdims=True)
    aff[total < 1.0] = 1.0 / ref.shape[0]  # blank image: no colour evidence
    return aff.astype(np.float32)


@dataclass
class Oracle:
    """The PLANTED tastes of the simulated shoppers. EVALUATION ONLY: never train on it.

    ``utility`` scores any images (from pixels) plus their category for any users; the purchases
    were sampled from ``softmax(utility / temperature)``.
    """

    category_weights: np.ndarray  # (U, C)
    colour_prefs: np.ndarray  # (U, K) in {-1, 0, +1}
    style_dirs: np.ndarray  # (U, D) unit vectors
    style_mean: np.ndarray  # (C, D) per-category feature standardisation
    style_std: np.ndarray  # (C, D)
    category_scale: float = 1.0
    colour_scale: float = 1.5
    style_scale: float = 1.0
    temperature: float = 0.5
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.category_weights.shape[0])

    def item_signals(self, images: np.ndarray, categories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(standardised style features (N, D), colour affinity (N, K)) of images."""
        cats = np.asarray(categories, dtype=np.int64)
        z = (style_features(images) - self.style_mean[cats]) / self.style_std[cats]
        return z.astype(np.float32), garment_colour_affinity(images)

    def utility_from_signals(
        self, users: np.ndarray, style: np.ndarray, affinity: np.ndarray, categories: np.ndarray
    ) -> np.ndarray:
        """Utility (len(users), N) from precomputed :meth:`item_signals`."""
        u = np.asarray(users, dtype=np.int64)
        cats = np.asarray(categories, dtype=np.int64)
        cat_term = np.log(self.category_weights[u][:, cats] + _CATEGORY_FLOOR)
        colour_term = self.colour_prefs[u] @ affinity.T
        style_term = self.style_dirs[u] @ style.T
        return (
            self.category_scale * cat_term + self.colour_scale * colour_term + self.style_scale * style_term
        ).astype(np.float32)

    def utility(self, users: np.ndarray, images: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """Planted utility (len(users), N) of uint8 (N, S, S, 3) images with categories (N,)."""
        style, affinity = self.item_signals(images, categories)
        return self.utility_from_signals(users, style, affinity, categories)

    def save(self, directory: Path | str, name: str = ORACLE_FILE) -> Path:
        """Write ``<name>.npz`` and ``<name>.json`` (default ``oracle_simulated_tastes``) into ``directory``."""
        arrays = {
            "category_weights": self.category_weights,
            "colour_prefs": self.colour_prefs,
            "style_dirs": self.style_dirs,
            "style_mean": self.style_mean,
            "style_std": self.style_std,
        }
        meta = {
            "category_scale": self.category_scale,
            "colour_scale": self.colour_scale,
            "style_scale": self.style_scale,
            "temperature": self.temperature,
            "metadata": self.metadata,
        }
        return save_stored(directory, name, arrays, meta)

    @classmethod
    def load(cls, directory: Path | str, name: str = ORACLE_FILE) -> Oracle:
        """Read an oracle written by :meth:`save`."""
        arrays, meta = load_stored(directory, name, "simulated-taste oracle")
        fields: dict[str, Any] = {**arrays, **meta}
        return cls(**fields)


def _planted_tastes(
    rng: np.random.Generator, n_categories: int, n_colours: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    liked = rng.choice(n_categories, size=int(rng.integers(1, 4)), replace=False)
    alpha = np.full(n_categories, 0.05)
    alpha[liked] = 2.0
    weights = rng.dirichlet(alpha)
    prefs = np.zeros(n_colours)
    order = rng.permutation(n_colours)
    n_like, n_dislike = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    prefs[order[:n_like]] = 1.0
    prefs[order[n_like : n_like + n_dislike]] = -1.0
    direction = rng.standard_normal(STYLE_DIM)
    return weights, prefs, direction / np.linalg.norm(direction)


def _category_standardisation(
    features: np.ndarray, categories: np.ndarray, n_categories: int
) -> tuple[np.ndarray, np.ndarray]:
    mean = np.zeros((n_categories, features.shape[1]), dtype=np.float32)
    std = np.ones((n_categories, features.shape[1]), dtype=np.float32)
    for c in range(n_categories):
        rows = features[categories == c]
        if len(rows):
            mean[c] = rows.mean(axis=0)
        if len(rows) > 1:
            std[c] = np.maximum(rows.std(axis=0), 1e-3)
    return mean, std


def _purchase_count(rng: np.random.Generator, low: int, high: int, mean_extra: float) -> int:
    return int(min(high, low + rng.geometric(1.0 / (mean_extra + 1.0)) - 1))


def simulate_shoppers(
    catalogue: Catalogue,
    n_users: int = 2000,
    seed: int = 0,
    *,
    min_purchases: int = 5,
    max_purchases: int = 40,
    mean_extra_purchases: float = 7.0,
    new_arrival_fraction: float = 0.1,
    temperature: float = 0.5,
    progress: bool = False,
    batch_users: int = 256,
) -> tuple[Interactions, Oracle]:
    """SIMULATED purchases of ``n_users`` shoppers with planted tastes, and their oracle.

    Each user buys ``min_purchases + Geometric - 1`` items (capped at ``max_purchases``) without
    replacement with probability ``softmax(utility / temperature)``; one random purchase is the
    validation item, another the test item, the rest train. Items in the seeded
    ``new_arrival_fraction`` never appear in train (they become cold items).
    """
    if min_purchases < 3:
        raise ValueError("users need >= 3 purchases (train + validation + test)")
    n_items = len(catalogue)
    if n_items < max_purchases * 2:
        raise ValueError(f"catalogue too small ({n_items} items) for up to {max_purchases} purchases per user")
    n_categories, n_colours = len(catalogue.category_names), len(catalogue.colour_names)
    categories = np.asarray(catalogue.category, dtype=np.int64)

    raw = style_features(catalogue.images)
    style_mean, style_std = _category_standardisation(raw, categories, n_categories)
    tastes = [_planted_tastes(np.random.default_rng([seed, 1, u]), n_categories, n_colours) for u in range(n_users)]
    oracle = Oracle(
        category_weights=np.array([t[0] for t in tastes], dtype=np.float32).reshape(n_users, n_categories),
        colour_prefs=np.array([t[1] for t in tastes], dtype=np.float32).reshape(n_users, n_colours),
        style_dirs=np.array([t[2] for t in tastes], dtype=np.float32).reshape(n_users, STYLE_DIM),
        style_mean=style_mean,
        style_std=style_std,
        temperature=temperature,
        metadata={
            "simulated": "yes (planted tastes of simulated shoppers; evaluation only, never training)",
            "seed": seed,
            "n_users": n_users,
            "style_dim": STYLE_DIM,
            "style_projection_seed": STYLE_PROJECTION_SEED,
        },
    )
    style = (raw - style_mean[categories]) / style_std[categories]
    affinity = garment_colour_affinity(catalogue.images)

    new_arrival = np.zeros(n_items, dtype=bool)
    arrival_rng = np.random.default_rng([seed, 3])
    new_arrival[arrival_rng.choice(n_items, size=round(new_arrival_fraction * n_items), replace=False)] = True

    train: list[np.ndarray] = []
    validation = np.empty(n_users, dtype=np.int64)
    test = np.empty(n_users, dtype=np.int64)
    bar = tqdm(total=n_users, desc="simulating shoppers", unit="user", disable=not progress)
    for start in range(0, n_users, batch_users):
        users = np.arange(start, min(n_users, start + batch_users))
        util = oracle.utility_from_signals(users, style, affinity, categories) / temperature
        for row, u in enumerate(users):
            rng = np.random.default_rng([seed, 2, int(u)])
            n_u = _purchase_count(rng, min_purchases, max_purchases, mean_extra_purchases)
            scores = util[row] + rng.gumbel(size=n_items).astype(np.float32)
            depth = min(n_items, 2 * n_u + 20)
            top = np.argpartition(-scores, depth - 1)[:depth]
            ranked = top[np.argsort(-scores[top], kind="stable")]
            bought = ranked[:n_u]
            val_pos, test_pos = rng.choice(n_u, size=2, replace=False)
            validation[u], test[u] = bought[val_pos], bought[test_pos]
            held = {int(bought[val_pos]), int(bought[test_pos])}
            pool = [i for i in ranked if int(i) not in held and not new_arrival[i]]
            if len(pool) < n_u - 2:
                full = np.argsort(-scores, kind="stable")
                pool = [i for i in full if int(i) not in held and not new_arrival[i]]
            train.append(np.sort(np.array(pool[: n_u - 2], dtype=np.int64)))
        bar.update(len(users))
    bar.close()

    interactions = Interactions(
        n_users=n_users,
        n_items=n_items,
        user_ids=np.array([f"sim-user-{u:05d}" for u in range(n_users)], dtype=str),
        train=train,
        validation=validation,
        test=test,
        metadata={
            "simulated": "yes (simulated shoppers with planted tastes)",
            "seed": seed,
            "temperature": temperature,
            "purchases_per_user": [min_purchases, max_purchases],
            "new_arrival_fraction": new_arrival_fraction,
            "protocol": "DVBPR: per user 1 validation + 1 test purchase, the rest train",
        },
    )
    return interactions, oracle


def oracle_test_auc(
    oracle: Oracle, catalogue: Catalogue, interactions: Interactions, *, n_negatives: int = 100, seed: int = 0
) -> np.ndarray:
    """Per-user AUC of the oracle: P(utility(test item) > utility(random item not bought)).

    A sanity check that the planted taste shows in the held-out purchases (0.5 = no signal).
    """
    style, affinity = oracle.item_signals(catalogue.images, catalogue.category)
    rng = np.random.default_rng(seed)
    aucs = np.empty(interactions.n_users)
    for u in range(interactions.n_users):
        util = oracle.utility_from_signals(np.array([u]), style, affinity, catalogue.category)[0]
        bought = set(interactions.train[u].tolist()) | {int(interactions.validation[u]), int(interactions.test[u])}
        negatives = rng.choice(interactions.n_items, size=n_negatives * 2, replace=True)
        negatives = np.array([j for j in negatives if int(j) not in bought][:n_negatives])
        pos = util[interactions.test[u]]
        aucs[u] = np.mean(pos > util[negatives]) + 0.5 * np.mean(pos == util[negatives])
    return aucs
