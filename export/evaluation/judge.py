"""The judge of generated images: a small CNN category classifier trained on the REAL catalogue.

No Inception, LPIPS or CLIP weights exist offline, so a classifier trained here stands in for them:

* its category accuracy on generated images says whether a sample looks like the category it was
  asked for;
* its penultimate features (global average pooling, 128-d) give a domain Fréchet distance (FID in
  judge features, not Inception's) between generated and real held-out items, and the distance of
  each sample to its nearest real item.

FID is biased by sample size and noisy, so every figure is compared with a *real ceiling*: real
held-out items judged exactly like the samples (same counts, same reference draws), averaged over
several random draws. Report ``generated FID / real-vs-real FID``, never the raw FID alone.

The judge must never be an optimisation objective (import-linter forbids training, objective and
gradient-model code, and the serving package, from importing ``couturier.export.evaluation``).

Run layout (``runs/<profile>/judge/``)::

    checkpoint.pt   config + state dict (loads with ``torch.load(weights_only=True)``)
    metrics.json    held-out accuracy, confusion matrix, per-epoch loss, wall time, seed, profile
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from couturier.export.training.common import images_to_tensor, pick_device, seed_everything, write_json
from couturier.export.training.loaders import gather_rows, to_model_input

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"

# --- the network ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeConfig:
    """Architecture: one double-conv block (3x3 conv, BN, ReLU, twice; then 2x2 max-pool) per width.

    ``category_names``: the classes it tells apart, the training data's categories in code order."""

    category_names: tuple[str, ...]
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)

    @property
    def n_categories(self) -> int:
        return len(self.category_names)

    @property
    def feature_dim(self) -> int:
        """Width of the pooled penultimate features."""
        return self.channels[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "channels": list(self.channels),
            "category_names": list(self.category_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JudgeConfig:
        return cls(tuple(data["category_names"]), int(data["image_size"]), tuple(data["channels"]))


class JudgeNet(nn.Module):
    """(B,3,S,S) in [-1, 1] -> category logits (B,C); :meth:`features` gives the pooled (B,feature_dim)."""

    def __init__(self, cfg: JudgeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        blocks: list[nn.Module] = []
        c_in = 3
        for c_out in cfg.channels:
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.trunk = nn.Sequential(*blocks)
        self.head = nn.Linear(cfg.feature_dim, cfg.n_categories)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Judge:
    """A trained :class:`JudgeNet` (eval mode, CPU) applied to uint8 images (N,S,S,3), as numpy."""

    def __init__(self, net: JudgeNet) -> None:
        self.net = net.cpu().eval()
        self.config = net.cfg

    def outputs(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate features (N,feature_dim) float64 and category probabilities (N,C) float64."""
        images = np.asarray(images)
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise ValueError(f"the judge takes uint8 images (N,{size},{size},3), got {images.dtype} {images.shape}")
        feats, probs = [], []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                f = self.net.features(images_to_tensor(images[start : start + batch_size]))
                feats.append(f.double().numpy())
                probs.append(F.softmax(self.net.head(f), dim=1).double().numpy())
        if not feats:
            return np.zeros((0, self.config.feature_dim)), np.zeros((0, self.config.n_categories))
        return np.concatenate(feats), np.concatenate(probs)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Penultimate (pooled) features, (N,feature_dim)."""
        return self.outputs(images)[0]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax over the categories, (N,C)."""
        return self.outputs(images)[1]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Most likely category index per image, (N,)."""
        return self.probabilities(images).argmax(axis=1)


# --- training ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class JudgeProfile:
    """Optimisation of the judge: Adam with a cosine-decayed rate, flips and small shifts as augmentation."""

    name: str
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_shift: int = 2  # pixels; one random shift per batch, the border filled with white
    flip: bool = True
    channels: tuple[int, ...] = (32, 64, 128)
    seed: int = 0
    threads: int = 1
    use_cuda: bool = False
    max_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


JUDGE_PROFILES: dict[str, JudgeProfile] = {
    # one torch thread: on the shared 2-core machine it ran faster than two (see training/profiles.py)
    "demo": JudgeProfile(name="demo", epochs=6, max_seconds=300.0),
    "tiny": JudgeProfile(name="tiny", epochs=4, batch_size=16, max_seconds=60.0),  # ~6 s on 400 items
    "quality": JudgeProfile(name="quality", epochs=20, batch_size=256, use_cuda=True, threads=2),  # the shipped judge
    "full": JudgeProfile(name="full", epochs=20, batch_size=256, use_cuda=True, threads=8),
}


def judge_profile(name: str, **overrides: Any) -> JudgeProfile:
    """The named profile (demo, tiny, quality, full) with field overrides."""
    if name not in JUDGE_PROFILES:
        raise ValueError(f"unknown judge profile {name!r}; choose one of {', '.join(JUDGE_PROFILES)}")
    return replace(JUDGE_PROFILES[name], **overrides)


@dataclass
class JudgeResult:
    """The trained judge, the metrics written and the run directory (None when nothing was written)."""

    judge: Judge
    metrics: dict[str, Any]
    run_dir: Path | None


def _augment(x: torch.Tensor, prof: JudgeProfile, gen: torch.Generator) -> torch.Tensor:
    if prof.flip:
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    if prof.max_shift > 0:
        s = prof.max_shift
        dy, dx = (int(v) for v in torch.randint(0, 2 * s + 1, (2,), generator=gen))
        padded = F.pad(x, (s, s, s, s), value=1.0)  # white, like the catalogue's background
        x = padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
    return x


def train_judge(
    prepared: Any,
    run_dir: Path | str | None = None,
    profile: str | JudgeProfile = "demo",
    *,
    progress: bool = True,
    **overrides: Any,
) -> JudgeResult:
    """Train on ``prepared.catalogue`` (images, category), evaluate on ``prepared.heldout``; save when
    ``run_dir`` is given. The held-out items only measure the final judge: nothing is selected on them."""
    prof = judge_profile(profile, **overrides) if isinstance(profile, str) else replace(profile, **overrides)
    torch.set_num_threads(prof.threads)
    gen = seed_everything(prof.seed)
    device = pick_device(prof.use_cuda)
    cat, held = prepared.catalogue, prepared.heldout
    names = tuple(cat.category_names)
    cfg = JudgeConfig(image_size=int(cat.images.shape[1]), channels=tuple(prof.channels), category_names=names)
    net = JudgeNet(cfg).to(device)
    images = cat.images  # read one batch at a time (a memmap stays on disk)
    labels = torch.as_tensor(np.asarray(cat.category), dtype=torch.long, device=device)
    batches = max(1, -(-len(images) // prof.batch_size))
    opt = torch.optim.Adam(net.parameters(), lr=prof.lr, weight_decay=prof.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=prof.epochs * batches)
    history: list[dict[str, float]] = []
    capped = False
    start = time.perf_counter()
    bar = tqdm(range(prof.epochs), desc=f"judge[{prof.name}]", disable=not progress)
    for _epoch in bar:
        net.train()
        perm = torch.randperm(len(images), generator=gen).to(device)
        loss_sum, hits, seen = 0.0, 0, 0
        for b in range(batches):
            idx = perm[b * prof.batch_size : (b + 1) * prof.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            batch = to_model_input(gather_rows(images, idx.cpu().numpy()), device)
            logits = net(_augment(batch, prof, gen))
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            hits += int((logits.argmax(1) == labels[idx]).sum())
            seen += len(idx)
            if prof.max_seconds is not None and time.perf_counter() - start > prof.max_seconds:
                capped = True
                break
        history.append({"loss": loss_sum / max(seen, 1), "train_accuracy": hits / max(seen, 1)})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['train_accuracy']:.3f}")
        if capped:
            break
    train_s = time.perf_counter() - start
    judge = Judge(net)
    heldout = heldout_metrics(judge, held.images, np.asarray(held.category))
    metrics = {
        "profile": prof.to_dict(),
        "config": cfg.to_dict(),
        "device": str(device),
        "seed": prof.seed,
        "n_train": len(images),
        "epochs_done": len(history),
        "stopped_by_max_seconds": capped,
        "train_wall_s": round(train_s, 1),
        "history": history,
        **heldout,
    }
    out = None
    if run_dir is not None:
        out = save_judge(judge, run_dir, metrics)
    return JudgeResult(judge, metrics, out)


def heldout_metrics(judge: Judge, images: np.ndarray, categories: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-category accuracy and confusion matrix (rows: true, columns: predicted)."""
    pred = judge.predict(images)
    n = judge.config.n_categories
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (np.asarray(categories), pred), 1)
    totals = confusion.sum(axis=1)
    return {
        "n_heldout": len(pred),
        "heldout_accuracy": float((pred == categories).mean()) if len(pred) else float("nan"),
        "heldout_accuracy_per_category": {
            name: float(confusion[c, c] / totals[c]) if totals[c] else None
            for c, name in enumerate(judge.config.category_names)
        },
        "confusion_matrix": confusion.tolist(),
        "category_names": list(judge.config.category_names),
    }


def save_judge(judge: Judge, run_dir: Path | str, metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``checkpoint.pt`` (config + weights) and, if given, ``metrics.json``; returns ``run_dir``."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save({"config": judge.config.to_dict(), "state_dict": judge.net.state_dict()}, tmp)
    tmp.replace(out / CHECKPOINT)
    if metrics is not None:
        write_json(out / METRICS, dict(metrics))
    return out


def load_judge(run_dir: Path | str) -> Judge:
    """The judge saved by :func:`save_judge` (eval mode, CPU)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no trained judge at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = JudgeNet(JudgeConfig.from_dict(ckpt["config"]))
    net.load_state_dict(ckpt["state_dict"])
    return Judge(net)


# --- distances -----------------------------------------------------------------------------------


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian_frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    ``tr sqrt(cov_a cov_b)`` is taken as the sum of square roots of the eigenvalues of the symmetric
    PSD ``sqrt(cov_a) cov_b sqrt(cov_a)`` (same spectrum): stable for singular covariances.
    """
    root_a = _psd_sqrt(np.asarray(cov_a, dtype=np.float64))
    middle = root_a @ np.asarray(cov_b, dtype=np.float64) @ root_a
    cross = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None)).sum())
    diff = np.asarray(mu_a, dtype=np.float64) - np.asarray(mu_b, dtype=np.float64)
    value = float(diff @ diff) + float(np.trace(cov_a)) + float(np.trace(cov_b)) - 2.0 * cross
    return max(value, 0.0)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a,D) and (N_b,D) (FID's formula)."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N,D) with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each feature set needs at least two rows to fit a covariance")
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def nearest_real_distance(features: np.ndarray, real_features: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Per row of ``features``, the Euclidean distance to the nearest row of ``real_features``, (N,).

    The nearest row is found with the expanded squared distance; the reported distance is then
    recomputed directly, so an item that is in the reference set gets exactly 0.
    """
    x, ref = np.asarray(features, dtype=np.float64), np.asarray(real_features, dtype=np.float64)
    if x.ndim != 2 or ref.ndim != 2 or x.shape[1] != ref.shape[1] or len(ref) == 0:
        raise ValueError(f"need (N,D) features and a non-empty (M,D) reference, got {x.shape} and {ref.shape}")
    ref_sq = (ref**2).sum(1)
    out = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk]
        nearest = (ref_sq[None, :] - 2.0 * block @ ref.T).argmin(axis=1)
        out[start : start + chunk] = np.linalg.norm(block - ref[nearest], axis=1)
    return out


# --- judging sets of images ----------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledImages:
    """Images (N,S,S,3) uint8 with their category index (N,)."""

    images: np.ndarray
    categories: np.ndarray

    @classmethod
    def of(cls, catalogue: Any) -> LabelledImages:
        """A catalogue's images and categories."""
        return cls(np.asarray(catalogue.images), np.asarray(catalogue.category, dtype=np.int64))


@dataclass(frozen=True)
class GroupFigures:
    """The judge's figures for one category (or all of them)."""

    n_images: int  # images judged for accuracy and confidence
    n_per_draw: int  # images compared with the reference in each draw
    n_reference: int  # real held-out items they were compared with in each draw
    accuracy: float  # share the judge puts in the requested category
    confidence: float  # mean probability the judge gives to the requested category
    fid: float  # Fréchet distance in judge features, mean over draws
    fid_std: float
    nearest_real: float  # mean distance to the nearest real reference item (any category)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JudgeFigures:
    """Per-category and overall figures, averaged over ``draws`` random reference draws."""

    per_category: dict[str, GroupFigures]
    overall: GroupFigures
    draws: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_category": {name: g.to_dict() for name, g in self.per_category.items()},
            "overall": self.overall.to_dict(),
            "draws": self.draws,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class _Draw:
    held: dict[int, np.ndarray]  # reference rows held back per category: the real candidates of the ceiling
    reference: dict[int, np.ndarray]  # reference rows compared with, per category
    mixed: np.ndarray  # reference rows of the overall figure, in the candidates' category mix


def _reference_draws(ref_categories: np.ndarray, wanted: Mapping[int, int], draws: int, seed: int) -> list[_Draw]:
    """Random disjoint (held back, reference) splits of each category of the real reference.

    ``k = min(wanted, half the category)`` items are held back; the rest is the reference. The
    samples' figures and the ceiling's use the same draws (same seed), hence the same references.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        held: dict[int, np.ndarray] = {}
        reference: dict[int, np.ndarray] = {}
        for c, n in sorted(wanted.items()):
            rows = np.flatnonzero(ref_categories == c)
            k = min(int(n), len(rows) // 2)
            if k < 2:
                continue
            perm = rng.permutation(rows)
            held[c], reference[c] = perm[:k], perm[k:]
        if not held:
            raise ValueError("the real reference has too few items per category (at least 4 needed)")
        scale = min(len(reference[c]) // len(held[c]) for c in held)
        mixed = np.concatenate([reference[c][: scale * len(held[c])] for c in held])
        out.append(_Draw(held, reference, mixed))
    return out


def _figures(
    pool_features: np.ndarray,
    pool_probs: np.ndarray,
    pool_categories: np.ndarray,
    pick: Callable[[int, int, _Draw], np.ndarray],
    ref_features: np.ndarray,
    draws: list[_Draw],
    names: tuple[str, ...],
    seed: int,
) -> JudgeFigures:
    """Figures of the candidate ``pool``; ``pick(draw_index, category, draw)`` gives a draw's candidate rows."""
    judged = sorted(draws[0].held)
    fids: dict[int, list[float]] = {c: [] for c in judged}
    overall_fids: list[float] = []
    nearest: dict[int, list[np.ndarray]] = {c: [] for c in judged}
    for d, draw in enumerate(draws):
        rows = {c: pick(d, c, draw) for c in judged}
        all_reference = np.concatenate([draw.reference[c] for c in judged])
        for c in judged:
            fids[c].append(frechet_distance(pool_features[rows[c]], ref_features[draw.reference[c]]))
            nearest[c].append(nearest_real_distance(pool_features[rows[c]], ref_features[all_reference]))
        union = np.concatenate([rows[c] for c in judged])
        overall_fids.append(frechet_distance(pool_features[union], ref_features[draw.mixed]))

    def group(
        members: np.ndarray, n_per_draw: int, n_reference: int, fid: list[float], near: list[np.ndarray]
    ) -> GroupFigures:
        cats = pool_categories[members]
        return GroupFigures(
            n_images=len(members),
            n_per_draw=n_per_draw,
            n_reference=n_reference,
            accuracy=float((pool_probs[members].argmax(1) == cats).mean()),
            confidence=float(pool_probs[members, cats].mean()),
            fid=float(np.mean(fid)),
            fid_std=float(np.std(fid)),
            nearest_real=float(np.concatenate(near).mean()),
        )

    first = draws[0]
    per_category = {
        names[c]: group(
            np.flatnonzero(pool_categories == c), len(first.held[c]), len(first.reference[c]), fids[c], nearest[c]
        )
        for c in judged
    }
    overall = group(
        np.flatnonzero(np.isin(pool_categories, judged)),
        sum(len(first.held[c]) for c in judged),
        len(first.mixed),
        overall_fids,
        [n for c in judged for n in nearest[c]],
    )
    return JudgeFigures(per_category, overall, len(draws), seed)


def _counts(categories: np.ndarray, n_categories: int) -> dict[int, int]:
    counts = np.bincount(np.asarray(categories, dtype=np.int64), minlength=n_categories)
    return {c: int(n) for c, n in enumerate(counts) if n > 0}


def judge_images(
    judge: Judge,
    images: np.ndarray,
    categories: np.ndarray,
    real_reference: LabelledImages,
    *,
    draws: int = 10,
    seed: int = 0,
) -> JudgeFigures:
    """The judge's figures for ``images`` that were asked to show ``categories`` (e.g. GAN samples).

    Accuracy and confidence cover every image. In each draw, each category's FID compares up to
    ``min(n, half that category of the reference)`` images with the rest of the real reference of
    that category; the overall FID compares them all with a reference subset in the same category mix.
    :func:`real_ceiling` with the same ``draws`` and ``seed`` judges real items on the same references.
    Categories with fewer than 4 reference items are left out.
    """
    cats = np.asarray(categories, dtype=np.int64)
    if len(cats) != len(images):
        raise ValueError(f"{len(images)} images but {len(cats)} categories")
    names = judge.config.category_names
    features, probs = judge.outputs(images)
    ref_features, _ = judge.outputs(real_reference.images)
    plan = _reference_draws(real_reference.categories, _counts(cats, len(names)), draws, seed)
    rng = np.random.default_rng([seed, 1])
    by_category = {c: np.flatnonzero(cats == c) for c in plan[0].held}

    def pick(_d: int, c: int, draw: _Draw) -> np.ndarray:
        rows, k = by_category[c], len(draw.held[c])
        return rows if len(rows) == k else rng.choice(rows, size=k, replace=False)

    return _figures(features, probs, cats, pick, ref_features, plan, names, seed)


def real_ceiling(
    judge: Judge,
    real_reference: LabelledImages,
    per_category: int | Mapping[int, int],
    *,
    draws: int = 10,
    seed: int = 0,
) -> JudgeFigures:
    """The same figures for REAL held-out items against another (disjoint) draw of real items.

    ``per_category``: how many images per category the figures to compare with had (an int, or
    category -> count: pass the generated categories' counts). Accuracy and confidence are over
    every reference item (the judge's held-out figures); FID and nearest-real distance over the
    held-back items of each draw.
    """
    names = judge.config.category_names
    wanted = {c: per_category for c in range(len(names))} if isinstance(per_category, int) else dict(per_category)
    cats = np.asarray(real_reference.categories, dtype=np.int64)
    features, probs = judge.outputs(real_reference.images)
    plan = _reference_draws(cats, wanted, draws, seed)
    return _figures(features, probs, cats, lambda _d, c, draw: draw.held[c], features, plan, names, seed)


@dataclass(frozen=True)
class JudgeReport:
    """Generated images' figures next to the real ceiling on the same reference draws."""

    generated: JudgeFigures
    ceiling: JudgeFigures

    def fid_ratio(self) -> dict[str, float]:
        """Generated FID / real-vs-real FID, per category and ``overall`` (1 = as close as real items)."""
        pairs = {n: (g, self.ceiling.per_category[n]) for n, g in self.generated.per_category.items()}
        pairs["overall"] = (self.generated.overall, self.ceiling.overall)
        return {name: g.fid / r.fid if r.fid > 0 else float("inf") for name, (g, r) in pairs.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated": self.generated.to_dict(),
            "real_ceiling": self.ceiling.to_dict(),
            "fid_ratio": self.fid_ratio(),
        }


def judge_against_real(
    judge: Judge,
    images: np.ndarray,
    categories: np.ndarray,
    real_reference: LabelledImages,
    *,
    draws: int = 10,
    seed: int = 0,
) -> JudgeReport:
    """:func:`judge_images` and :func:`real_ceiling` on the same reference draws."""
    generated = judge_images(judge, images, categories, real_reference, draws=draws, seed=seed)
    counts = _counts(np.asarray(categories, dtype=np.int64), judge.config.n_categories)
    return JudgeReport(generated, real_ceiling(judge, real_reference, counts, draws=draws, seed=seed))


__all__ = [
    "CHECKPOINT",
    "JUDGE_PROFILES",
    "GroupFigures",
    "Judge",
    "JudgeConfig",
    "JudgeFigures",
    "JudgeNet",
    "JudgeProfile",
    "JudgeReport",
    "JudgeResult",
    "LabelledImages",
    "frechet_distance",
    "gaussian_frechet_distance",
    "heldout_metrics",
    "judge_against_real",
    "judge_images",
    "judge_profile",
    "load_judge",
    "nearest_real_distance",
    "real_ceiling",
    "save_judge",
    "train_judge",
]
