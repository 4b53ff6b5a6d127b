"""Train the category-conditioned LSGAN on catalogue images (Kang et al. 2017's design generator).

Conditioning: ``prepared.catalogue.category`` (6 categories). Adam(2e-4, betas (0.5, 0.999)) for
both nets, one D step then one G step per batch. Writes ``run_dir``::

    checkpoint.pt   config + profile + G/D state dicts
    metrics.json    losses, timings, category consistency of samples (1-NN in pixel space)
    curves.png      D/G losses and D outputs per step
    samples.png     one row per category (same z across rows)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from couturier.export.models.gan import (
    Discriminator,
    GanConfig,
    Generator,
    lsgan_d_loss,
    lsgan_g_loss,
    one_hot,
    sample_z,
)
from couturier.export.training.common import (
    CHECKPOINT,
    images_to_tensor,
    load_checkpoint,
    pick_device,
    save_checkpoint,
    seed_everything,
    tensor_to_images,
    write_json,
)
from couturier.export.training.plots import draw_curves, image_grid
from couturier.export.training.profiles import GanProfile, gan_profile
from couturier.services.common.models import CATEGORIES


@dataclass
class GanResult:
    """Trained networks (eval mode, CPU), the metrics written and the run directory."""

    generator: Generator
    discriminator: Discriminator
    metrics: dict[str, Any]
    run_dir: Path


def train_gan(
    prepared: Any, run_dir: Path | str, profile: str | GanProfile = "demo", *, progress: bool = True, **overrides: Any
) -> GanResult:
    """Train G/D on ``prepared.catalogue`` (images + category); write checkpoint, metrics and PNGs."""
    prof = gan_profile(profile, **overrides) if isinstance(profile, str) else profile
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(prof.threads)
    gen = seed_everything(prof.seed)
    device = pick_device(prof.use_cuda)
    cat = prepared.catalogue
    names = tuple(getattr(cat, "category_names", CATEGORIES))
    cfg = GanConfig(
        image_size=cat.images.shape[1],
        z_dim=prof.z_dim,
        n_categories=len(names),
        g_channels=tuple(prof.g_channels),
        d_channels=tuple(prof.d_channels),
    )
    G, D = Generator(cfg).to(device), Discriminator(cfg).to(device)
    data = images_to_tensor(cat.images).to(device)
    labels = torch.as_tensor(np.asarray(cat.category), dtype=torch.long, device=device)
    opt_g = torch.optim.Adam(G.parameters(), lr=prof.lr_g, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=prof.lr_d, betas=(0.5, 0.999))
    curves: dict[str, list[float]] = {k: [] for k in ("loss_d", "loss_g", "d_real", "d_fake")}
    b = prof.batch_size
    perm, cursor, step, capped = torch.randperm(len(data), generator=gen).to(device), 0, 0, False
    start = time.perf_counter()
    bar = tqdm(range(prof.steps), desc=f"gan[{prof.name}]", mininterval=2.0, disable=not progress)
    for step in bar:
        if cursor + b > len(data):
            perm, cursor = torch.randperm(len(data), generator=gen).to(device), 0
        idx = perm[cursor : cursor + b]
        cursor += b
        real, oh = data[idx], one_hot(labels[idx], cfg.n_categories)
        fake = G(sample_z(b, cfg.z_dim, gen, device), oh)  # fake shares the real batch's categories
        d_real, d_fake = D(real, oh), D(fake.detach(), oh)
        loss_d = lsgan_d_loss(d_real, d_fake)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = lsgan_g_loss(D(fake, oh))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        for key, val in (("loss_d", loss_d), ("loss_g", loss_g), ("d_real", d_real.mean()), ("d_fake", d_fake.mean())):
            curves[key].append(val.item())
        if step % prof.log_every == 0:
            bar.set_postfix(d=f"{curves['loss_d'][-1]:.3f}", g=f"{curves['loss_g'][-1]:.3f}")
        if prof.max_seconds is not None and time.perf_counter() - start > prof.max_seconds:
            capped = True
            break
    train_s = time.perf_counter() - start
    G, D = G.cpu().eval(), D.cpu().eval()
    steps_done = step + 1
    save_checkpoint(
        run_dir / CHECKPOINT,
        config=cfg.to_dict(),
        profile=prof.to_dict(),
        step=steps_done,
        category_names=list(names),
        generator=G.state_dict(),
        discriminator=D.state_dict(),
    )
    draw_curves(run_dir / "curves.png", curves, f"conditional LSGAN [{prof.name}] {steps_done} steps")
    save_samples(G, run_dir / "samples.png", names, seed=prof.seed)
    metrics = {
        "profile": prof.to_dict(),
        "config": cfg.to_dict(),
        "device": str(device),
        "category_names": list(names),
        "steps_done": steps_done,
        "stopped_by_max_seconds": capped,
        "train_wall_s": round(train_s, 1),
        "s_per_step": round(train_s / steps_done, 4),
        "final": {k: float(np.mean(v[-50:])) for k, v in curves.items()},
        "category_consistency_1nn": category_consistency(G, cat, seed=prof.seed),
    }
    write_json(run_dir / "metrics.json", metrics)
    return GanResult(G, D, metrics, run_dir)


@torch.no_grad()
def generate(G: Generator, categories: np.ndarray | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Samples (B,3,S,S) in [-1, 1] for the given categories (eval mode, seeded z)."""
    cats = torch.as_tensor(np.asarray(categories), dtype=torch.long)
    z = sample_z(len(cats), G.cfg.z_dim, torch.Generator().manual_seed(seed))
    return G.eval()(z, one_hot(cats, G.cfg.n_categories))


def category_consistency(
    G: Generator, catalogue: Any, n_per_category: int = 50, n_reference: int = 3000, seed: int = 0
) -> dict[str, float]:
    """Share of samples whose nearest real image (pixel L2, random reference subset) has the
    conditioned category: overall and per category (chance ~ that category's share)."""
    rng = np.random.default_rng(seed)
    ref = rng.choice(len(catalogue.images), size=min(n_reference, len(catalogue.images)), replace=False)
    ref_x = catalogue.images[ref].reshape(len(ref), -1).astype(np.float32)
    ref_c = np.asarray(catalogue.category)[ref]
    cats = np.repeat(np.arange(G.cfg.n_categories), n_per_category)
    fake = tensor_to_images(generate(G, cats, seed=seed + 7)).reshape(len(cats), -1).astype(np.float32)
    d2 = (fake**2).sum(1)[:, None] - 2 * fake @ ref_x.T + (ref_x**2).sum(1)[None, :]
    hit = ref_c[d2.argmin(1)] == cats
    out = {"overall": float(hit.mean())}
    out.update({f"category_{c}": float(hit[cats == c].mean()) for c in range(G.cfg.n_categories)})
    return out


def save_samples(G: Generator, path: Path, names: tuple[str, ...], seed: int = 0, n_cols: int = 10) -> None:
    """PNG grid: one row per category, the same z in each column."""
    z = sample_z(n_cols, G.cfg.z_dim, torch.Generator().manual_seed(seed + 1))
    rows = []
    with torch.no_grad():
        for c in range(G.cfg.n_categories):
            oh = one_hot(torch.full((n_cols,), c), G.cfg.n_categories)
            rows.append(list(tensor_to_images(G.eval()(z, oh))))
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, scale=3, labels=list(names), label_w=80).save(path)


def load_gan(run_dir: Path | str) -> tuple[Generator, Discriminator]:
    """The trained generator and discriminator (eval mode, CPU) from ``run_dir/checkpoint.pt``."""
    ckpt = load_checkpoint(Path(run_dir) / CHECKPOINT)
    cfg = GanConfig.from_dict(ckpt["config"])
    G, D = Generator(cfg), Discriminator(cfg)
    G.load_state_dict(ckpt["generator"])
    D.load_state_dict(ckpt["discriminator"])
    return G.eval(), D.eval()
