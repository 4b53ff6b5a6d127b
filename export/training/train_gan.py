"""Train the category-conditioned GAN on catalogue images (Kang et al. 2017's design generator).

Conditioning: ``prepared.catalogue.category``. Hinge loss with a spectral-norm projection
discriminator, DiffAugment (translation + cutout) on every image D sees, one D step then one G step
per batch, Adam (``betas`` of the profile), optionally MSGAN's mode-seeking term. G's weights are averaged (EMA, ``ema_decay``); the EMA generator
is what is saved and served, with its BatchNorm statistics re-estimated at the end ("standing
statistics": the running statistics of the trained G belong to other weights). Writes ``run_dir``::

    checkpoint.pt   config + profile + architecture tag + EMA-G / baked-D state dicts
    resume.pt       resumable state (G, D, EMA, optimisers, RNGs, data order) every checkpoint_every steps
    metrics.json    losses, timings, category consistency of samples (1-NN in pixel space)
    curves.png      D/G losses and D outputs per step
    samples.png     one row per category (same z across rows)
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
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
from couturier.export.training import distributed
from couturier.export.training.common import (
    CHECKPOINT,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    tensor_to_images,
    write_json,
)
from couturier.export.training.loaders import stream_batches
from couturier.export.training.plots import draw_curves, image_grid
from couturier.export.training.precision import backward_step, resolve_precision
from couturier.export.training.profiles import GanProfile, gan_profile
from couturier.export.training.resume import (
    capture_rng,
    due,
    load_resume,
    load_scaler,
    rank_rng,
    restore_rng,
    save_resume,
)


@dataclass
class GanResult:
    """Trained networks (eval mode, CPU), the metrics written and the run directory."""

    generator: Generator
    discriminator: Discriminator
    metrics: dict[str, Any]
    run_dir: Path


def train_gan(
    prepared: Any,
    run_dir: Path | str,
    profile: str | GanProfile = "demo",
    *,
    progress: bool = True,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    **overrides: Any,
) -> GanResult:
    """Train G/D on ``prepared.catalogue`` (images + category); write checkpoint, metrics and PNGs.

    ``resume`` continues from ``run_dir/resume.pt`` when there is one; ``on_step(step)`` is called
    after every step. Under torchrun (DistributedDataParallel) only rank 0 finalises and writes; the
    other ranks return the EMA generator and D with empty metrics.
    """
    prof = gan_profile(profile, **overrides) if isinstance(profile, str) else profile
    run_dir = Path(run_dir)
    env = distributed.init_from_env(prof.use_cuda)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(prof.threads)
    gen = seed_everything(prof.seed)  # the data order: the same on every rank
    # z, augmentation and standing statistics: the same generator in one process (as always), one per rank under DDP
    noise = torch.Generator().manual_seed(prof.seed + 1 + env.rank) if env.enabled else gen
    device = distributed.device_for(env, prof.use_cuda)
    precision = resolve_precision(prof.amp, prof.amp_dtype, device)
    cat = prepared.catalogue
    names = tuple(cat.category_names)  # the dataset's, in code order: saved with the weights, exported with them
    cfg = GanConfig(
        image_size=cat.images.shape[1],
        z_dim=prof.z_dim,
        n_categories=len(names),
        g_channels=tuple(prof.g_channels),
        d_channels=tuple(prof.d_channels),
    )
    G, D = Generator(cfg).to(device), Discriminator(cfg, spectral=True).to(device)
    G_ema = copy.deepcopy(G).eval()
    n_items = len(cat.images)
    labels = torch.as_tensor(np.asarray(cat.category), dtype=torch.long)
    betas = (float(prof.betas[0]), float(prof.betas[1]))
    opt_g = torch.optim.Adam(G.parameters(), lr=prof.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=prof.lr_d, betas=betas)
    scaler_g, scaler_d = precision.scaler(), precision.scaler()
    curves: dict[str, list[float]] = {k: [] for k in ("loss_d", "loss_g", "d_real", "d_fake")}
    b = prof.batch_size
    perm, cursor, step, capped, train_s = torch.randperm(n_items, generator=gen), 0, 0, False, 0.0
    history = torch.zeros(prof.steps, len(curves), device=device)
    generators = {"order": gen, "noise": noise}
    saved = load_resume(run_dir, prof.to_dict()) if resume else None
    if saved is not None:
        G.load_state_dict(saved["generator"])
        D.load_state_dict(saved["discriminator"])
        G_ema.load_state_dict(saved["generator_ema"])
        opt_g.load_state_dict(saved["opt_g"])
        opt_d.load_state_dict(saved["opt_d"])
        load_scaler(scaler_g, saved["scaler_g"])
        load_scaler(scaler_d, saved["scaler_d"])
        perm, cursor, step, train_s = saved["perm"], saved["cursor"], saved["step"], saved["train_s"]
        done = saved["history"][: prof.steps]
        history[: len(done)] = done.to(device)
        restore_rng(rank_rng(saved["rng"], env), generators)
    resumed_from = step
    G_t, D_t = distributed.wrap(G, env, device), distributed.wrap(D, env, device)

    def checkpoint() -> None:
        save_resume(
            run_dir,
            env,
            generator=G.state_dict(),
            discriminator=D.state_dict(),
            generator_ema=G_ema.state_dict(),
            opt_g=opt_g.state_dict(),
            opt_d=opt_d.state_dict(),
            scaler_g=scaler_g.state_dict(),
            scaler_d=scaler_d.state_dict(),
            perm=perm,
            cursor=cursor,
            step=step,
            history=history[:step].cpu(),
            train_s=train_s + time.perf_counter() - start,
            rng=distributed.gather_to_main(capture_rng(generators), env),  # the noise differs per rank
            profile=prof.to_dict(),
        )

    start = time.perf_counter()
    bar = tqdm(
        total=prof.steps,
        initial=step,
        desc=f"gan[{prof.name}]",
        mininterval=2.0,
        disable=not (progress and env.is_main),
    )
    while step < prof.steps and not capped:
        if cursor + b > n_items:
            perm, cursor = torch.randperm(n_items, generator=gen), 0
        # the batches the current permutation still fills (all items once when the batch exceeds them)
        k = min(max(1, (n_items - cursor) // b), prof.steps - step)
        batches = [perm[cursor + i * b : cursor + (i + 1) * b].numpy() for i in range(k)]
        batches = [idx[distributed.shard(len(idx), env)] for idx in batches]
        for idx, real in zip(batches, stream_batches(cat.images, batches, device, workers=prof.workers)):
            cursor += b
            oh, n = one_hot(labels[idx].to(device), cfg.n_categories), len(idx)
            if prof.mode_seeking > 0:  # rows i and i + n/2 share a category: the mode-seeking pairs
                oh_fake = torch.cat([oh[: n // 2], oh[: n - n // 2]])
            else:
                oh_fake = oh  # fake shares the real batch's categories
            z = sample_z(n, cfg.z_dim, noise, device)
            with precision.autocast():
                fake = G_t(z, oh_fake)
                d_real = D_t(diff_augment(real, noise), oh)
                d_fake = D_t(diff_augment(fake.detach(), noise), oh_fake)
                loss_d = hinge_d_loss(d_real, d_fake)
            backward_step(loss_d, opt_d, scaler_d)
            with precision.autocast():
                loss_g = hinge_g_loss(D_t(diff_augment(fake, noise), oh_fake))
                if prof.mode_seeking > 0:
                    loss_g = loss_g + prof.mode_seeking * mode_seeking_loss(z, fake)
            backward_step(loss_g, opt_g, scaler_g)
            update_ema(G_ema, G, prof.ema_decay if step >= prof.ema_start else 0.0)
            row = torch.stack([loss_d.float(), loss_g.float(), d_real.float().mean(), d_fake.float().mean()])
            history[step] = row.detach()  # no GPU sync
            step += 1
            bar.update()
            if progress and env.is_main and (step - 1) % prof.log_every == 0:
                bar.set_postfix(d=f"{loss_d.item():.3f}", g=f"{loss_g.item():.3f}")
            if prof.max_seconds is not None:
                capped = distributed.any_rank(time.perf_counter() - start > prof.max_seconds, env)
            if capped or due(step, prof.checkpoint_every):
                checkpoint()
            if on_step is not None:
                on_step(step)
            if capped:
                break
    bar.close()
    if not capped:
        checkpoint()
    train_s += time.perf_counter() - start
    steps_done = step
    if not env.is_main:
        return GanResult(G_ema.cpu().eval(), D.cpu().eval(), {}, run_dir)
    for key, column in zip(curves, history[:steps_done].cpu().T.tolist(), strict=True):
        curves[key] = column
    standing_statistics(G_ema, labels.to(device), noise)
    G, D = G_ema.cpu().eval(), bake_spectral_norm(D).cpu().eval()
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
        "precision": precision.describe(),
        "distributed": env.to_dict(),
        "seeds": {
            "weights_and_data_order": prof.seed,
            "noise": prof.seed + 1 + env.rank if env.enabled else prof.seed,
            "samples_png": prof.seed + 1,
            "category_consistency": prof.seed,
        },
        "category_names": list(names),
        "steps_done": steps_done,
        "resumed_from_step": resumed_from,
        "stopped_by_max_seconds": capped,
        "train_wall_s": round(train_s, 1),
        "s_per_step": round(train_s / max(steps_done, 1), 4),
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
    ref_c = np.asarray(catalogue.category)[ref]
    cats = np.repeat(np.arange(G.cfg.n_categories), n_per_category)
    fake = tensor_to_images(generate(G, cats, seed=seed + 7)).reshape(len(cats), -1).astype(np.float32)
    d2 = np.concatenate(  # reference images read and converted 512 at a time (bounded memory at any image size)
        [_sq_dist(fake, catalogue.images[ref[s : s + 512]]) for s in range(0, len(ref), 512)], axis=1
    )
    hit = ref_c[d2.argmin(1)] == cats
    out = {"overall": float(hit.mean())}
    out.update({f"category_{c}": float(hit[cats == c].mean()) for c in range(G.cfg.n_categories)})
    return out


def _sq_dist(fake: np.ndarray, ref_images: np.ndarray) -> np.ndarray:
    """Squared pixel distances (F, R) of flattened float images to uint8 reference images."""
    ref_x = ref_images.reshape(len(ref_images), -1).astype(np.float32)
    return (fake**2).sum(1)[:, None] - 2 * fake @ ref_x.T + (ref_x**2).sum(1)[None, :]


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


def gan_category_names(run_dir: Path | str) -> tuple[str, ...]:
    """The category names of the GAN in ``run_dir``, in its one-hot order (saved from the training data).

    A checkpoint without them (or with a count that does not match the networks) is refused: the
    names cannot be guessed, so the GAN must be trained again."""
    ckpt = load_checkpoint(Path(run_dir) / CHECKPOINT)
    names = tuple(ckpt.get("category_names") or ())
    if not names or len(names) != int(ckpt["config"]["n_categories"]):
        raise ValueError(
            f"{run_dir}: the GAN checkpoint does not name its {ckpt['config']['n_categories']} categories, so the "
            "exported models could not say what each one-hot position means; retrain it with couturier train --only gan"
        )
    return names
