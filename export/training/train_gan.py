"""Train the category-conditioned GAN on catalogue images (Kang et al. 2017's design generator).

Conditioning: ``prepared.catalogue.category``. Hinge loss with a spectral-norm projection
discriminator, DiffAugment (translation + cutout) on every image D sees, one D step then one G step
per batch, Adam (``betas`` of the profile), optionally MSGAN's mode-seeking term. G's weights are averaged (EMA, ``ema_decay``); the EMA generator
is what is saved and served, with its BatchNorm statistics re-estimated at the end ("standing
statistics": the running statistics of the trained G belong to other weights). Writes ``run_dir``::

    checkpoint.pt   config + profile + architecture tag + EMA-G / baked-D state dicts
    metrics.json    losses, timings, category consistency of samples (1-NN in pixel space)
    curves.png      D/G losses and D outputs per step
    samples.png     one row per category (same z across rows)
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from couturier.export.models.gan import (
    ARCHITECTURE,
    Discriminator,
    GanConfig,
    Generator,
    bake_spectral_norm,
    diff_augment,
    hinge_d_loss,
    hinge_g_loss,
    mode_seeking_loss,
    one_hot,
    sample_z,
    update_ema,
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
    G, D = Generator(cfg).to(device), Discriminator(cfg, spectral=True).to(device)
    G_ema = copy.deepcopy(G).eval()
    data = images_to_tensor(cat.images).to(device)
    labels = torch.as_tensor(np.asarray(cat.category), dtype=torch.long, device=device)
    betas = (float(prof.betas[0]), float(prof.betas[1]))
    opt_g = torch.optim.Adam(G.parameters(), lr=prof.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=prof.lr_d, betas=betas)
    curves: dict[str, list[float]] = {k: [] for k in ("loss_d", "loss_g", "d_real", "d_fake")}
    b = prof.batch_size
    perm, cursor, step, capped = torch.randperm(len(data), generator=gen).to(device), 0, 0, False
    history = torch.zeros(prof.steps, len(curves), device=device)
    start = time.perf_counter()
    bar = tqdm(range(prof.steps), desc=f"gan[{prof.name}]", mininterval=2.0, disable=not progress)
    for step in bar:
        if cursor + b > len(data):
            perm, cursor = torch.randperm(len(data), generator=gen).to(device), 0
        idx = perm[cursor : cursor + b]
        cursor += b
        real, oh = data[idx], one_hot(labels[idx], cfg.n_categories)
        if prof.mode_seeking > 0:  # rows i and i + b/2 share a category: the mode-seeking pairs
            oh_fake = torch.cat([oh[: b // 2], oh[: b - b // 2]])
        else:
            oh_fake = oh  # fake shares the real batch's categories
        z = sample_z(b, cfg.z_dim, gen, device)
        fake = G(z, oh_fake)
        d_real, d_fake = D(diff_augment(real, gen), oh), D(diff_augment(fake.detach(), gen), oh_fake)
        loss_d = hinge_d_loss(d_real, d_fake)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = hinge_g_loss(D(diff_augment(fake, gen), oh_fake))
        if prof.mode_seeking > 0:
            loss_g = loss_g + prof.mode_seeking * mode_seeking_loss(z, fake)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        update_ema(G_ema, G, prof.ema_decay if step >= prof.ema_start else 0.0)
        history[step] = torch.stack([loss_d, loss_g, d_real.mean(), d_fake.mean()]).detach()  # no GPU sync
        if progress and step % prof.log_every == 0:
            bar.set_postfix(d=f"{loss_d.item():.3f}", g=f"{loss_g.item():.3f}")
        if prof.max_seconds is not None and time.perf_counter() - start > prof.max_seconds:
            capped = True
            break
    train_s = time.perf_counter() - start
    for key, column in zip(curves, history[: step + 1].cpu().T.tolist(), strict=True):
        curves[key] = column
    standing_statistics(G_ema, labels, gen)
    G, D = G_ema.cpu().eval(), bake_spectral_norm(D).cpu().eval()
    steps_done = step + 1
    save_checkpoint(
        run_dir / CHECKPOINT,
        architecture=ARCHITECTURE,
        config=cfg.to_dict(),
        profile=prof.to_dict(),
        step=steps_done,
        category_names=list(names),
        generator=G.state_dict(),
        discriminator=D.state_dict(),
    )
    draw_curves(run_dir / "curves.png", curves, f"conditional hinge GAN [{prof.name}] {steps_done} steps")
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
def standing_statistics(G: Generator, labels: torch.Tensor, gen: torch.Generator, batches: int = 50) -> None:
    """Re-estimate G's BatchNorm running statistics for its current weights (cumulative average over
    ``batches`` batches of prior samples, categories drawn as in the data); G ends in eval mode."""
    device = next(G.parameters()).device
    norms = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    G.train()
    for _ in range(batches):
        idx = torch.randint(0, len(labels), (256,), generator=gen).to(device)
        G(sample_z(256, G.cfg.z_dim, gen, device), one_hot(labels[idx], G.cfg.n_categories))
    for m in norms:
        m.momentum = 0.1
    G.eval()


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
    if ckpt.get("architecture") != ARCHITECTURE:
        raise ValueError(
            f"{run_dir} holds a GAN of another architecture ({ckpt.get('architecture', 'LSGAN DCGAN')!r},"
            f" this code builds {ARCHITECTURE!r}); retrain it with couturier train --only gan"
        )
    cfg = GanConfig.from_dict(ckpt["config"])
    G, D = Generator(cfg), Discriminator(cfg)
    G.load_state_dict(ckpt["generator"])
    D.load_state_dict(ckpt["discriminator"])
    return G.eval(), D.eval()
