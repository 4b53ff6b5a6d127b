"""Judge the three generation flows as they are served: Design, Alter and SellerShifts (GIGS).

The flows run exactly as the latent service runs them: the service's own optimisers
(:mod:`couturier.services.latent.optimize`, default settings) on the exported gradient models,
through the in-process onnxruntime backend over a model repository holding just those models. Every
generated image is then judged by the independent judge (category accuracy; domain FID per category
against real held-out items, with the real-vs-real ceiling) and, on simulated data, scored by the
planted-taste oracle, next to the learned score the optimisation raised.

Protocol (seeded; ``GenerationSettings``):

* **Shoppers**: ``n_shoppers`` (user, category) pairs, the categories in turn, each user drawn among
  those who bought that category in training (observable data, not the oracle): "design a dress for
  a shopper who buys dresses".
* **Design**: ``designs_per_shopper`` designs per shopper (MEAN objective, one user), each started
  from the best of ``DEFAULT_START_CANDIDATES`` prior samples as the service does. Preference
  raised = the mean learned score of the shopper's designs went up. Oracle top-10% = the oracle
  utility of the shopper's best design (highest learned score: the one a shop would show first) is
  at least the 90th percentile of that shopper's utilities over the catalogue items of the category.
  Its ceiling for this scorer (``oracle_top10_share_scorer_ceiling``): the same share for the
  catalogue item with the highest learned score, what a perfect optimiser of the learned score
  could show without leaving the catalogue.
* **Alter**: each shopper with a held-out product of their category: inversion, then preference
  maximisation from the inverted latent. Oracle gain = oracle(altered) - oracle(the product photo).
* **GIGS**: (group, item) pairs: a group is ``group_size`` users whose favourite category is the
  item's; the item a held-out product of that category; ``SellerShifts`` defaults (6 variants).
  Positive shift = the mean preference shift of the pair's variants is > 0; diversity = the smallest
  pairwise 1-SSIM between two variants of one pair.

Writes ``<runs>/<profile>/judge/generation.json`` and three galleries (``designs.png``,
``alter.png``, ``gigs.png``) beside it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from couturier.export.evaluation.judge import Judge, LabelledImages, judge_against_real, load_judge
from couturier.export.training.common import write_json
from couturier.services.common.models import GRADIENT_MODELS, ITEM_ENCODER
from couturier.services.latent.optimize import (
    DEFAULT_START_CANDIDATES,
    invert,
    maximise_preference,
    one_hot,
    sample_prior,
    select_starts,
    seller_shifts,
)
from couturier.services.latent.ssim import ssim

GENERATION_JSON = "generation.json"


@dataclass(frozen=True)
class GenerationSettings:
    """How many shoppers, designs, alterations and GIGS pairs to judge, and the seed of every draw."""

    n_shoppers: int = 50
    designs_per_shopper: int = 4
    n_alter: int = 50
    gigs_pairs_per_category: int = 4
    group_size: int = 20
    draws: int = 10
    seed: int = 0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N,3,S,S) float in [-1, 1] -> (N,S,S,3) uint8 (what the judge and the oracle read)."""
    x = np.clip((np.asarray(images, dtype=np.float64) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def to_signed(images: np.ndarray) -> np.ndarray:
    """(N,S,S,3) uint8 -> (N,3,S,S) float32 in [-1, 1] (what the generator makes)."""
    return (np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0).astype(np.float32)


class ServedGradientModels:
    """The run's exported gradient models (and the scorer's item encoder, for the scorer's ceiling) in a
    temporary model repository, run by onnxruntime in-process."""

    MODELS = (*GRADIENT_MODELS, ITEM_ENCODER)

    def __init__(self, onnx_dir: Path) -> None:
        from couturier.export.pipeline import publish_all
        from couturier.services.common.inference import OnnxRuntimeBackend

        missing = [m for m in self.MODELS if not (onnx_dir / f"{m}.onnx").is_file()]
        if missing:
            raise FileNotFoundError(f"{onnx_dir} lacks {', '.join(missing)}: run `couturier export` first")
        self._dir = Path(tempfile.mkdtemp(prefix="couturier-judge-repo-"))
        publish_all({m: onnx_dir / f"{m}.onnx" for m in self.MODELS}, self._dir)
        self.backend = OnnxRuntimeBackend(self._dir, max_workers=1)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class _World:
    prepared: Any
    judge: Judge
    theta: np.ndarray  # (U,K) in interaction order
    favourite: np.ndarray  # (U,) category bought most in training
    bought: list[set[int]]  # categories each user bought in training
    reference: LabelledImages
    n_categories: int


def _favourite_categories(prepared: Any) -> np.ndarray:
    cats = np.asarray(prepared.catalogue.category)
    n = int(cats.max()) + 1
    return np.array([np.bincount(cats[rows], minlength=n).argmax() for rows in prepared.interactions.train])


def _bought_categories(prepared: Any) -> list[set[int]]:
    cats = np.asarray(prepared.catalogue.category)
    return [set(np.unique(cats[rows]).tolist()) for rows in prepared.interactions.train]


def _shoppers(world: _World, n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` distinct (user, category) pairs: categories in turn, a random buyer of each."""
    rng = np.random.default_rng([seed, 1])
    picked: list[tuple[int, int]] = []
    used: set[int] = set()
    for k in range(n):
        c = k % world.n_categories
        buyers = [u for u, cats in enumerate(world.bought) if c in cats and u not in used]
        if not buyers:
            continue
        user = int(rng.choice(buyers))
        used.add(user)
        picked.append((user, c))
    return picked


def _oracle_utility(prepared: Any, users: Sequence[int], images: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """The planted taste of ``users`` for ``images``: (U, N); NaN everywhere on real data (no oracle)."""
    if getattr(prepared, "oracle", None) is None:
        return np.full((len(users), len(images)), np.nan)
    return np.asarray(prepared.oracle.utility(np.asarray(users), images, np.asarray(categories)), dtype=np.float64)


def _oracle_mean(values: Sequence[float], *, positive: bool = False) -> float | None:
    """Mean (or share > 0) of oracle figures; None on real data, where there is no planted taste."""
    arr = np.asarray(values, dtype=np.float64)
    if not arr.size or np.isnan(arr).all():
        return None
    return float(np.mean(arr > 0)) if positive else float(np.mean(arr))


def _category_percentile(prepared: Any, user: int, category: int, q: float) -> float:
    rows = np.flatnonzero(np.asarray(prepared.catalogue.category) == category)
    utilities = _oracle_utility(prepared, [user], prepared.catalogue.images[rows], np.full(len(rows), category))
    return float(np.percentile(utilities[0], q))


def _held_item(prepared: Any, category: int, rng: np.random.Generator) -> int | None:
    """A random held-out product of ``category`` (None when the held-out catalogue has none)."""
    rows = np.flatnonzero(np.asarray(prepared.heldout.category) == category)
    return int(rng.choice(rows)) if len(rows) else None


async def _scorer_ceiling(world: _World, backend: Any, shoppers: list[tuple[int, int]]) -> float | None:
    """Share of shoppers whose catalogue item with the highest LEARNED score in the category is in their
    planted-taste top 10% of it: how far the scorer a design climbs agrees with the taste it stands for
    (None on real data)."""
    p = world.prepared
    if getattr(p, "oracle", None) is None:
        return None
    images, cats = p.catalogue.images, np.asarray(p.catalogue.category)
    phi = []
    for start in range(0, len(images), 256):
        out = await backend.infer(ITEM_ENCODER, {"image": to_signed(images[start : start + 256])}, ["embedding"])
        phi.append(np.asarray(out["embedding"], np.float64))
    vectors = np.concatenate(phi)
    hits = []
    for user, c in shoppers:
        rows = np.flatnonzero(cats == c)
        utility = _oracle_utility(p, [user], images[rows], np.full(len(rows), c))[0]
        best = int(np.argmax(vectors[rows] @ world.theta[user].astype(np.float64)))
        hits.append(float(utility[best] >= np.percentile(utility, 90.0)))
    return float(np.mean(hits))


async def _designs(
    world: _World, backend: Any, shoppers: list[tuple[int, int]], s: GenerationSettings
) -> dict[str, Any]:
    p = world.prepared
    images, cats, raised, top10, top10_all, gains, learned_gain = [], [], [], [], [], [], []
    starts = []
    for k, (user, c) in enumerate(shoppers):
        n = s.designs_per_shopper
        candidates = sample_prior(n * DEFAULT_START_CANDIDATES, int(await _z_dim(backend)), seed=s.seed * 100_003 + k)
        category = one_hot(c, world.n_categories, n)
        theta = world.theta[user][None]
        z0 = await select_starts(backend, candidates=candidates, category=category[:1], theta=theta, n=n)
        before: list[np.ndarray] = []

        async def first(step: int, _z: np.ndarray, _obj: np.ndarray, image: np.ndarray, keep: list = before) -> None:
            if step == 0:
                keep.append(image)

        res = await maximise_preference(backend, z0=z0, category=category, theta=theta, on_step=first)
        after = to_uint8(res.image)
        start = to_uint8(before[0])
        learned_before, learned_after = res.scores_before[:, 0], res.scores_after[:, 0]
        oracle_after = _oracle_utility(p, [user], after, np.full(len(after), c))[0]
        oracle_before = _oracle_utility(p, [user], start, np.full(len(start), c))[0]
        p90 = _category_percentile(p, int(user), c, 90.0)
        best = int(np.argmax(learned_after))
        raised.append(float(learned_after.mean() > learned_before.mean()))
        top10.append(float(oracle_after[best] >= p90) if not np.isnan(p90) else np.nan)
        top10_all.extend(np.where(np.isnan(oracle_after), np.nan, oracle_after >= p90).tolist())
        gains.append(float(oracle_after.mean() - oracle_before.mean()))
        learned_gain.append(float(learned_after.mean() - learned_before.mean()))
        images.append(after)
        starts.append(start)
        cats.extend([c] * len(after))
    all_images, all_cats = np.concatenate(images), np.asarray(cats)
    figures = _judged(world, all_images, all_cats, s)
    return {
        **figures,
        "n_shoppers": len(shoppers),
        "designs_per_shopper": s.designs_per_shopper,
        "preference_raised_share": float(np.mean(raised)),
        "learned_score_gain_mean": float(np.mean(learned_gain)),
        "oracle_top10_share": _oracle_mean(top10),
        "oracle_top10_share_all_designs": _oracle_mean(top10_all),
        "oracle_top10_share_scorer_ceiling": await _scorer_ceiling(world, backend, shoppers),
        "oracle_gain_mean": _oracle_mean(gains),
        "oracle_gain_positive_share": _oracle_mean(gains, positive=True),
        "_gallery": (np.concatenate(starts), all_images, all_cats),
    }


async def _z_dim(backend: Any) -> int:
    from couturier.services.common.models import PREF_GRAD

    return int((await backend.input_shapes(PREF_GRAD, ""))["z"][-1])


async def _alter(world: _World, backend: Any, shoppers: list[tuple[int, int]], s: GenerationSettings) -> dict[str, Any]:
    p = world.prepared
    rng = np.random.default_rng([s.seed, 2])
    originals, recons, altered, cats = [], [], [], []
    gain_vs_product, gain_vs_recon, raised, recon_ssim = [], [], [], []
    for user, c in shoppers[: s.n_alter]:
        row = _held_item(p, c, rng)
        if row is None:
            continue
        product = p.heldout.images[row : row + 1]
        onehot = one_hot(c, world.n_categories)
        inv = await invert(backend, target=to_signed(product), category=onehot)
        res = await maximise_preference(backend, z0=inv.z, category=onehot, theta=world.theta[user][None])
        recon, alt = to_uint8(inv.image), to_uint8(res.image)
        u = _oracle_utility(p, [user], np.concatenate([product, recon, alt]), np.full(3, c))[0]
        gain_vs_product.append(u[2] - u[0])
        gain_vs_recon.append(u[2] - u[1])
        raised.append(float(res.scores_after[0, 0] > res.scores_before[0, 0]))
        recon_ssim.append(float(ssim(inv.image[0], to_signed(product)[0])))
        originals.append(product)
        recons.append(recon)
        altered.append(alt)
        cats.append(c)
    cat_arr = np.asarray(cats)
    recon_all, altered_all = np.concatenate(recons), np.concatenate(altered)
    recon_figures = _judged(world, recon_all, cat_arr, s)
    altered_figures = _judged(world, altered_all, cat_arr, s)
    return {
        "n_pairs": len(cats),
        "reconstruction_category_accuracy": recon_figures["category_accuracy"],
        "reconstruction_fid_ratio": recon_figures["fid_ratio"],
        "reconstruction_ssim_mean": float(np.mean(recon_ssim)),
        "altered_category_accuracy": altered_figures["category_accuracy"],
        "altered_fid_ratio": altered_figures["fid_ratio"],
        "altered_per_category_accuracy": altered_figures["per_category_accuracy"],
        "real_ceiling_accuracy": altered_figures.get("real_ceiling_accuracy"),
        "preference_raised_share": float(np.mean(raised)),
        "oracle_gain_share": _oracle_mean(gain_vs_product, positive=True),
        "oracle_gain_mean": _oracle_mean(gain_vs_product),
        "oracle_gain_vs_reconstruction_share": _oracle_mean(gain_vs_recon, positive=True),
        "_gallery": (np.concatenate(originals), recon_all, altered_all, cat_arr),
    }


async def _gigs(world: _World, backend: Any, s: GenerationSettings) -> dict[str, Any]:
    p = world.prepared
    rng = np.random.default_rng([s.seed, 3])
    shifts_positive, variant_positive, min_opp, oracle_gain, variants, variant_cats = [], [], [], [], [], []
    gallery: list[tuple[int, np.ndarray, np.ndarray]] = []  # the first pair of each category
    for c in range(world.n_categories):
        fans = np.flatnonzero(world.favourite == c)
        if len(fans) < 2:
            continue
        for pair in range(s.gigs_pairs_per_category):
            group = rng.choice(fans, size=min(s.group_size, len(fans)), replace=False)
            row = _held_item(p, c, rng)
            if row is None:
                break
            product = p.heldout.images[row : row + 1]
            onehot = one_hot(c, world.n_categories)
            inv = await invert(backend, target=to_signed(product), category=onehot)
            res = await seller_shifts(
                backend,
                base_z=inv.z[0],
                category=onehot[0],
                theta=world.theta[group],
                user_weight=np.full(len(group), 1.0 / len(group)),
                seed=int(rng.integers(1 << 30)),
            )
            shifts_positive.append(float(res.preference_shift.mean() > 0))
            variant_positive.extend((res.preference_shift > 0).astype(float).tolist())
            n = len(res.image)
            pair_ssim = ssim(res.image[:, None], res.image[None, :])  # (n,n)
            min_opp.append(float((1.0 - pair_ssim)[~np.eye(n, dtype=bool)].min()))
            imgs = to_uint8(res.image)
            base = to_uint8(res.base_image[None])
            u = _oracle_utility(p, group.tolist(), np.concatenate([base, imgs]), np.full(n + 1, c)).mean(axis=0)
            oracle_gain.extend((u[1:] - u[0]).tolist())
            variants.append(imgs)
            variant_cats.extend([c] * n)
            if pair == 0:
                gallery.append((c, np.concatenate([product, base]), imgs))
    figures = _judged(world, np.concatenate(variants), np.asarray(variant_cats), s)
    return {
        "n_pairs": len(shifts_positive),
        "group_size": s.group_size,
        "positive_shift_share": float(np.mean(shifts_positive)),
        "positive_variant_share": float(np.mean(variant_positive)),
        "variant_category_accuracy": figures["category_accuracy"],
        "variant_fid_ratio": figures["fid_ratio"],
        "variant_per_category_accuracy": figures["per_category_accuracy"],
        # the judge on real held-out items of the same categories: what "every variant passes" is held against
        "real_ceiling_accuracy": figures.get("real_ceiling_accuracy"),
        "real_ceiling_per_category_accuracy": figures.get("real_ceiling_per_category_accuracy"),
        "min_pairwise_opposite_ssim": float(np.min(min_opp)),
        "median_pairwise_opposite_ssim": float(np.median(min_opp)),
        "oracle_gain_share": _oracle_mean(oracle_gain, positive=True),
        "oracle_gain_mean": _oracle_mean(oracle_gain),
        "_gallery": gallery,
    }


def _judged(world: _World, images: np.ndarray, categories: np.ndarray, s: GenerationSettings) -> dict[str, Any]:
    counts = np.bincount(np.asarray(categories, dtype=np.int64), minlength=world.n_categories)
    if counts.max() < 2:  # too few images of any one category for a Fréchet distance: accuracy only
        predicted = world.judge.predict(images)
        names = world.judge.config.category_names
        return {
            "category_accuracy": float(np.mean(predicted == categories)),
            "per_category_accuracy": {
                names[c]: float(np.mean(predicted[categories == c] == c)) for c in np.unique(categories)
            },
            "fid_ratio": float("nan"),
            "fid_note": "fewer than 2 images per category: no Fréchet distance",
        }
    report = judge_against_real(world.judge, images, categories, world.reference, draws=s.draws, seed=s.seed)
    gen = report.generated
    return {
        "category_accuracy": gen.overall.accuracy,
        "per_category_accuracy": {name: g.accuracy for name, g in gen.per_category.items()},
        "fid_ratio": report.fid_ratio()["overall"],
        "per_category_fid_ratio": {k: v for k, v in report.fid_ratio().items() if k != "overall"},
        "real_ceiling_accuracy": report.ceiling.overall.accuracy,
        "real_ceiling_per_category_accuracy": {name: g.accuracy for name, g in report.ceiling.per_category.items()},
        "nearest_real": gen.overall.nearest_real,
        "real_ceiling_nearest_real": report.ceiling.overall.nearest_real,
    }


def evaluate_generation(
    runs_root: Path | str,
    prepared: Any,
    settings: GenerationSettings | None = None,
    *,
    reference: LabelledImages | None = None,
) -> dict[str, Any]:
    """Run and judge Design, Alter and GIGS on the run's exported models; write JSON and galleries.

    ``reference``: the real items FID compares with (default: the held-out catalogue)."""
    s = settings or GenerationSettings()
    root = Path(runs_root)
    judge = load_judge(root / "judge")
    users = np.load(root / "user_vectors.npz")
    if list(users["user_ids"]) != list(np.asarray(prepared.interactions.user_ids)):
        raise ValueError(f"{root / 'user_vectors.npz'} belongs to other shoppers than the prepared data")
    world = _World(
        prepared=prepared,
        judge=judge,
        theta=np.asarray(users["theta"], dtype=np.float32),
        favourite=_favourite_categories(prepared),
        bought=_bought_categories(prepared),
        reference=reference if reference is not None else LabelledImages.of(prepared.heldout),
        n_categories=judge.config.n_categories,
    )
    shoppers = _shoppers(world, max(s.n_shoppers, s.n_alter), s.seed)
    served = ServedGradientModels(root / "onnx")
    started = time.perf_counter()
    try:
        designs = asyncio.run(_designs(world, served.backend, shoppers[: s.n_shoppers], s))
        alter = asyncio.run(_alter(world, served.backend, shoppers, s))
        gigs = asyncio.run(_gigs(world, served.backend, s))
    finally:
        served.close()
    out = root / "judge"
    names = judge.config.category_names
    starts, design_images, design_cats = designs.pop("_gallery")
    _design_gallery(out / "designs.png", prepared, judge, starts, design_images, design_cats, names)
    originals, recons, altered, alter_cats = alter.pop("_gallery")
    _alter_gallery(out / "alter.png", judge, originals, recons, altered, alter_cats, names)
    _gigs_gallery(out / "gigs.png", judge, gigs.pop("_gallery"))
    result = {
        "note": (
            "Flows run with the latent service's optimisers (default settings) on the exported gradient models; "
            "images judged by the judge CNN (trained on real catalogue images, never optimised against); oracle = "
            "the SIMULATED planted tastes (None on real data: no planted taste to check against). fid_ratio = "
            "domain FID / real-vs-real FID on the same reference draws."
        ),
        "data": _data_kind(prepared),
        "settings": asdict(s),
        "wall_s": round(time.perf_counter() - started, 1),
        "designs": designs,
        "alter": alter,
        "gigs": gigs,
    }
    write_json(out / GENERATION_JSON, result)
    return result


def _data_kind(prepared: Any) -> str:
    provenance = getattr(prepared, "provenance", "simulated")
    name = getattr(prepared, "name", "the demo world")
    return f"{provenance} data: {name}" + (" (oracle = planted taste)" if getattr(prepared, "oracle", None) else "")


# --- galleries -----------------------------------------------------------------------------------

_SCALE = 3


def _tile(image: np.ndarray, caption: str = "", ok: bool | None = None) -> Image.Image:
    size = image.shape[0] * _SCALE
    tile = Image.new("RGB", (size + 8, size + 20), "white")
    tile.paste(Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST), (4, 2))
    if caption:
        colour = "black" if ok is None else ("darkgreen" if ok else "firebrick")
        ImageDraw.Draw(tile).text((4, size + 5), caption, fill=colour, font=ImageFont.load_default())
    return tile


def _sheet(rows: list[list[Image.Image]], labels: list[str], title: str, path: Path) -> Path:
    width = max(sum(t.width for t in row) for row in rows) + 110
    height = sum(max(t.height for t in row) for row in rows) + 24
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill="black", font=ImageFont.load_default())
    y = 24
    for label, row in zip(labels, rows, strict=True):
        draw.text((4, y + 40), label, fill="black", font=ImageFont.load_default())
        x = 110
        for tile in row:
            sheet.paste(tile, (x, y))
            x += tile.width
        y += max(t.height for t in row)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _judged_tiles(judge: Judge, images: np.ndarray, category: int, names: Sequence[str]) -> list[Image.Image]:
    probs = judge.probabilities(images)
    return [
        _tile(img, f"{names[int(p.argmax())]} {p.max():.2f}", int(p.argmax()) == category)
        for img, p in zip(images, probs, strict=True)
    ]


def _design_gallery(
    path: Path,
    prepared: Any,
    judge: Judge,
    starts: np.ndarray,
    designs: np.ndarray,
    cats: np.ndarray,
    names: Sequence[str],
    per_row: int = 4,
) -> Path:
    """Per shopper (first 8): the GAN's own samples (start points) | designs | nearest real products."""
    rows, labels = [], []
    db = prepared.catalogue.images.reshape(len(prepared.catalogue.images), -1).astype(np.float32)
    for k in range(min(6, len(designs) // per_row)):
        sl = slice(k * per_row, (k + 1) * per_row)
        c = int(cats[sl][0])
        flat = designs[sl].reshape(per_row, -1).astype(np.float32)
        nearest = ((flat**2).sum(1)[:, None] - 2 * flat @ db.T + (db**2).sum(1)[None]).argmin(axis=1)
        spacer = Image.new("RGB", (12, 10), "white")
        row = [_tile(s) for s in starts[sl]] + [spacer] + _judged_tiles(judge, designs[sl], c, names)
        row += [spacer] + [_tile(prepared.catalogue.images[i], "nearest real") for i in nearest]
        rows.append(row)
        labels.append(f"shopper {k + 1}\n{names[c]}")
    title = "GAN samples (start) | designs after Design (judge's category, green = requested) | nearest real products"
    return _sheet(rows, labels, title, path)


def _alter_gallery(
    path: Path,
    judge: Judge,
    originals: np.ndarray,
    recons: np.ndarray,
    altered: np.ndarray,
    cats: np.ndarray,
    names: Sequence[str],
) -> Path:
    rows, labels = [], []
    for k in range(min(6, len(cats))):
        c = int(cats[k])
        row = [_tile(originals[k], "product")]
        row += _judged_tiles(judge, recons[k : k + 1], c, names) + _judged_tiles(judge, altered[k : k + 1], c, names)
        rows.append(row)
        labels.append(f"pair {k + 1}\n{names[c]}")
    return _sheet(rows, labels, "Alter: product | its inversion | altered for the shopper (judge's category)", path)


def _gigs_gallery(path: Path, judge: Judge, gallery: list[tuple[int, np.ndarray, np.ndarray]]) -> Path:
    names = judge.config.category_names
    rows, labels = [], []
    for c, base, variants in gallery:
        row = [_tile(base[0], "product"), _tile(base[1], "inverted")]
        row += [Image.new("RGB", (12, 10), "white"), *_judged_tiles(judge, variants, c, names)]
        rows.append(row)
        labels.append(names[c])
    return _sheet(rows, labels, "GIGS: seller's product | inverted base | variants for a group", path)
