"""Retrieval evaluation: held-out queries against the catalogue, cosine similarity, brute force.

Reports precision@k (k = 1, 5, 10) for every label the dataset has: the category always, each
categorical attribute where present (e.g. colour), and on the simulated world the Fashion-MNIST
class and class-and-colour ("same product look"). Unknown labels (-1) are left out: a query without
the label is not counted, a product without it is never a hit. Also median milliseconds per query
(batch 1, numpy brute force over the whole catalogue, encoder time reported separately), for
InfoGAN-D features, raw pixels and EfficientNet-Lite0 ImageNet features.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from couturier.export.training.common import images_to_tensor, write_json

KS = (1, 5, 10)


def embed_images(
    encoder: nn.Module,
    images: np.ndarray,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    desc: str | None = None,
) -> np.ndarray:
    """Run an image encoder over uint8 images in batches -> float32 (N, D)."""
    out = []
    encoder = encoder.to(device).eval()
    with torch.no_grad():
        for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=desc is None, leave=False):
            out.append(encoder(images_to_tensor(images[i : i + batch_size]).to(device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def top_k(queries: np.ndarray, database: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices (Q, k) of the k most cosine-similar database rows (rows assumed L2-normalised)."""
    k = min(k, len(database))
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), chunk):
        sims = queries[s : s + chunk] @ database.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[s : s + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def precision_at_k(
    neighbours: np.ndarray, query_labels: np.ndarray, db_labels: np.ndarray, ks: Sequence[int] = KS
) -> dict[str, float]:
    """Mean fraction of the top-k neighbours whose label equals the query's label, per k.

    Queries with an unknown label (< 0) are left out; NaN when no query has the label."""
    known = query_labels >= 0
    hits = db_labels[neighbours[known]] == query_labels[known][:, None]
    return {
        f"p@{k}": float(hits[:, :k].mean()) if known.any() else float("nan") for k in ks if k <= neighbours.shape[1]
    }


def rank_of(queries: np.ndarray, database: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of database row ``target[i]`` for query i (ties broken pessimistically)."""
    sims = queries @ database.T
    own = sims[np.arange(len(queries)), target]
    return (sims > own[:, None]).sum(axis=1) + (sims == own[:, None]).sum(axis=1) - 1


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = (10, 50)) -> dict[str, float]:
    """Fraction of queries whose target ranks within the top k."""
    return {f"R@{k}": float((ranks < k).mean()) for k in ks}


def _codes(cat: Any, name: str) -> np.ndarray | None:
    value = getattr(cat, name, None)
    if value is None:
        return None
    codes = np.asarray(value, dtype=np.int64)
    return codes if codes.size and (codes >= 0).any() else None


def attribute_labels(cat: Any) -> dict[str, np.ndarray]:
    """Label arrays precision is measured against (-1 = unknown): ``category``, every categorical
    attribute of the catalogue, and where known ``fm_class`` and ``class_colour`` (the simulated world)."""
    labels = {"category": np.asarray(cat.category, dtype=np.int64)}
    for name, codes in sorted((getattr(cat, "attributes", None) or {}).items()):
        labels[name] = np.asarray(codes, dtype=np.int64)
    colour, fm = _codes(cat, "colour"), _codes(cat, "fm_class")
    if colour is not None:
        labels.setdefault("colour", colour)
    if fm is not None:
        labels["fm_class"] = fm
        if colour is not None:
            labels["class_colour"] = np.where((fm >= 0) & (colour >= 0), fm * 1000 + colour, -1)
    return labels


def evaluate_embeddings(
    query_emb: np.ndarray, db_emb: np.ndarray, query_cat: Any, db_cat: Any, ks: Sequence[int] = KS
) -> dict[str, dict[str, float]]:
    """precision@k for every label both the queries and the catalogue have (:func:`attribute_labels`)."""
    nn_idx = top_k(query_emb, db_emb, max(ks))
    q_lab, d_lab = attribute_labels(query_cat), attribute_labels(db_cat)
    return {a: precision_at_k(nn_idx, q_lab[a], d_lab[a], ks) for a in q_lab if a in d_lab}


def ms_per_query(db_emb: np.ndarray, query_emb: np.ndarray, k: int = 10, n: int = 200) -> float:
    """Median ms of one brute-force top-k search (batch 1) over the whole database."""
    times = []
    for q in query_emb[:n]:
        t = time.perf_counter()
        sims = db_emb @ q
        part = np.argpartition(-sims, k)[:k]
        part[np.argsort(-sims[part])]
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def encoder_ms_per_image(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, n: int = 30) -> float:
    """Median ms to encode a single image (batch 1) with ``fn``."""
    fn(images[:1])
    times = []
    for i in range(min(n, len(images))):
        t = time.perf_counter()
        fn(images[i : i + 1])
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def evaluate_method(name: str, encode: Callable[[np.ndarray], np.ndarray], prepared: Any) -> dict[str, Any]:
    """Embed catalogue and held-out queries with ``encode`` and measure precision and latency."""
    t0 = time.perf_counter()
    db = encode(prepared.catalogue.images)
    q = encode(prepared.heldout.images)
    embed_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "method": name,
        "dim": int(db.shape[1]),
        "precision": evaluate_embeddings(q, db, prepared.heldout, prepared.catalogue),
        "search_ms_per_query_median": ms_per_query(db, q),
        "encode_ms_per_image_median": encoder_ms_per_image(encode, prepared.heldout.images),
        "embed_all_s": round(embed_s, 2),
    }
    return result


def run_retrieval_eval(
    prepared: Any,
    infogan_run_dir: Path,
    out_dir: Path,
    methods: Sequence[str] = ("infogan_d", "pixels", "efficientnet_lite0"),
    effnet_input: int = 224,
    threads: int = 1,
) -> dict[str, Any]:
    """Compare the methods on held-out queries; write ``metrics.json`` under ``out_dir``."""
    from couturier.export.models.baselines import EfficientNetLite0Features, pixel_features
    from couturier.export.training.train_infogan import load_infogan

    torch.set_num_threads(threads)
    encoders: dict[str, Callable[[np.ndarray], np.ndarray]] = {"pixels": pixel_features}
    if "infogan_d" in methods:
        enc = load_infogan(infogan_run_dir).encoder()
        encoders["infogan_d"] = lambda im: embed_images(enc, im)
    notes: dict[str, str] = {"pixels": "inverted RGB pixels (background 0), L2-normalised"}
    if "efficientnet_lite0" in methods:
        try:
            eff = EfficientNetLite0Features(input_size=effnet_input)
            encoders["efficientnet_lite0"] = lambda im: embed_images(eff, im, batch_size=64)
            notes["efficientnet_lite0"] = f"ImageNet EfficientNet-Lite0, images resized to {effnet_input}px, GAP 1280-d"
        except Exception as exc:
            notes["efficientnet_lite0"] = f"unavailable: {type(exc).__name__}: {exc}"
    results = {}
    for name in methods:
        if name in encoders:
            results[name] = evaluate_method(name, encoders[name], prepared)
    summary = {
        "n_catalogue": len(prepared.catalogue.images),
        "n_queries": len(prepared.heldout.images),
        "queries": _queries_note(prepared),
        "similarity": "cosine (L2-normalised vectors, numpy brute force)",
        "methods": results,
        "notes": notes,
    }
    write_json(Path(out_dir) / "metrics.json", summary)
    return summary


def _queries_note(prepared: Any) -> str:
    provenance = getattr(prepared, "provenance", "simulated")
    if provenance == "simulated":
        return "held-out Fashion-MNIST test images (never in the catalogue); simulated colours"
    return f"held-out products of the {provenance} dataset {getattr(prepared, 'name', '')!r} (never in the catalogue)"


EFFNET_INPUT = {"demo": 112, "full": 224}
