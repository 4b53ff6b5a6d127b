"""Train the label-free InfoGAN whose discriminator trunk is the retrieval encoder (Ay et al.).

No labels are used for training: only catalogue images. Losses (Chen et al. 2016), with the
mutual-information term I = lambda_cat CE(Q_cat, c_cat) + lambda_cont MSE(Q_cont, c_cont)
(fixed-variance Gaussian) on generated images: D's trunk and head minimise BCE(real, 1) +
BCE(fake, 0) + I, so the shared trunk (the retrieval embedding) learns the codes too; G and the Q
head minimise BCE(D(G(z,c)), 1) + I. Writes ``run_dir``::

    checkpoint.pt   config + profile + G/D state dicts
    resume.pt       resumable state (G, D, optimisers, RNGs, data order) every checkpoint_every steps
    metrics.json    losses, timing, code/class purity and precision@k of the D embedding
    curves.png      training curves          samples.png   one row per categorical code
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from couturier.export.models.infogan import InfoGAN, InfoGANConfig, build_infogan, sample_latent
from couturier.export.training import distributed
from couturier.export.training.common import (
    CHECKPOINT,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    tensor_to_images,
    write_json,
)
from couturier.export.training.loaders import EVAL_CHUNK, map_chunks, stream_batches
from couturier.export.training.plots import draw_curves, image_grid
from couturier.export.training.precision import backward_step, resolve_precision
from couturier.export.training.profiles import InfoGANProfile, infogan_profile
from couturier.export.training.resume import (
    capture_rng,
    due,
    load_resume,
    load_scaler,
    rank_rng,
    restore_rng,
    save_resume,
)


def config_for(profile: InfoGANProfile, image_size: int) -> InfoGANConfig:
    """Architecture implied by a profile at the data's resolution."""
    return InfoGANConfig(
        image_size=image_size,
        noise_dim=profile.noise_dim,
        n_continuous=profile.n_continuous,
        g_channels=tuple(profile.g_channels),
        d_channels=tuple(profile.d_channels),
    )


def information_loss(
    q_cat: torch.Tensor, q_cont: torch.Tensor, c_cat: torch.Tensor, c_cont: torch.Tensor, prof: InfoGANProfile
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(I, its categorical CE, its continuous MSE) of Q's guesses of the codes ``c_cat``, ``c_cont``."""
    ce = F.cross_entropy(q_cat, c_cat)
    mse = F.mse_loss(q_cont, c_cont)
    return prof.lambda_cat * ce + prof.lambda_cont * mse, ce, mse


def discriminator_loss(
    D: torch.nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    c_cat: torch.Tensor,
    c_cont: torch.Tensor,
    prof: InfoGANProfile,
) -> torch.Tensor:
    """D's objective: real vs fake, plus the information term on the fake images' codes (through the
    shared trunk: without it the trunk, which is the retrieval embedding, never learns the codes)."""
    d_real, _, _ = D(real)
    d_fake, q_cat, q_cont = D(fake.detach())
    adversarial = F.binary_cross_entropy_with_logits(
        d_real, torch.ones_like(d_real)
    ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    return adversarial + information_loss(q_cat, q_cont, c_cat, c_cont, prof)[0]


def train_infogan(
    prepared: Any,
    run_dir: Path,
    profile: str | InfoGANProfile = "demo",
    *,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train on ``prepared.catalogue.images`` (no labels); return the metrics dict written to disk.

    ``resume`` continues from ``run_dir/resume.pt`` when there is one; ``on_step(step)`` is called
    after every step. Under torchrun the networks train with DistributedDataParallel and only rank 0
    evaluates and writes (the other ranks return an empty dict).
    """
    prof = infogan_profile(profile, **overrides) if isinstance(profile, str) else profile
    run_dir = Path(run_dir)
    env = distributed.init_from_env(prof.use_cuda)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(prof.threads)
    gen = seed_everything(prof.seed)  # the data order: the same on every rank
    noise = torch.Generator().manual_seed(prof.seed + 1 + env.rank) if env.enabled else gen  # latents
    device = distributed.device_for(env, prof.use_cuda)
    precision = resolve_precision(prof.amp, prof.amp_dtype, device)
    images = prepared.catalogue.images
    cfg = config_for(prof, images.shape[1])
    gan = build_infogan(cfg)
    G, D = gan.generator.to(device), gan.discriminator.to(device)
    opt_d = torch.optim.Adam(list(D.trunk.parameters()) + list(D.d_head.parameters()), lr=prof.lr_d, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(list(G.parameters()) + list(D.q_head.parameters()), lr=prof.lr_g, betas=(0.5, 0.999))
    scaler_d, scaler_g = precision.scaler(), precision.scaler()
    curves: dict[str, list[float]] = {
        k: [] for k in ("loss_d", "loss_g_adv", "info_cat_ce", "info_cont_mse", "q_cat_acc")
    }
    b, n_items = prof.batch_size, len(images)
    stopped_early, step, train_s = False, 0, 0.0
    perm, cursor = torch.randperm(n_items, generator=gen), 0
    generators = {"order": gen, "noise": noise}
    saved = load_resume(run_dir, prof.to_dict()) if resume else None
    if saved is not None:
        G.load_state_dict(saved["generator"])
        D.load_state_dict(saved["discriminator"])
        opt_g.load_state_dict(saved["opt_g"])
        opt_d.load_state_dict(saved["opt_d"])
        load_scaler(scaler_g, saved["scaler_g"])
        load_scaler(scaler_d, saved["scaler_d"])
        perm, cursor, step, train_s, curves = (
            saved["perm"],
            saved["cursor"],
            saved["step"],
            saved["train_s"],
            saved["curves"],
        )
        restore_rng(rank_rng(saved["rng"], env), generators)
    resumed_from = step
    G_t, D_t = distributed.wrap(G, env, device), distributed.wrap(D, env, device)

    def checkpoint() -> None:
        save_resume(
            run_dir,
            env,
            generator=G.state_dict(),
            discriminator=D.state_dict(),
            opt_g=opt_g.state_dict(),
            opt_d=opt_d.state_dict(),
            scaler_g=scaler_g.state_dict(),
            scaler_d=scaler_d.state_dict(),
            perm=perm,
            cursor=cursor,
            step=step,
            curves=curves,
            train_s=train_s + time.perf_counter() - start,
            rng=distributed.gather_to_main(capture_rng(generators), env),  # the latents differ per rank
            profile=prof.to_dict(),
        )

    start = time.perf_counter()
    bar = tqdm(total=prof.steps, initial=step, desc=f"infogan[{prof.name}]", mininterval=2.0, disable=not env.is_main)
    while step < prof.steps and not stopped_early:
        if cursor + b > n_items:
            perm, cursor = torch.randperm(n_items, generator=gen), 0
        k = min(max(1, (n_items - cursor) // b), prof.steps - step)
        batches = [perm[cursor + i * b : cursor + (i + 1) * b].numpy() for i in range(k)]
        batches = [idx[distributed.shard(len(idx), env)] for idx in batches]
        for real in stream_batches(images, batches, device, workers=prof.workers):
            cursor += b
            latent, c_cat, c_cont = sample_latent(cfg, len(real), noise, device=device)
            # discriminator step (trunk and D head; the Q head's gradients here are dropped below)
            with precision.autocast():
                fake = G_t(latent)
                loss_d = discriminator_loss(D_t, real, fake, c_cat, c_cont, prof)
            backward_step(loss_d, opt_d, scaler_d)
            # generator + Q step
            with precision.autocast():
                d_out, q_cat, q_cont = D_t(fake)
                adv = F.binary_cross_entropy_with_logits(d_out, torch.ones_like(d_out))
                info, ce, mse = information_loss(q_cat, q_cont, c_cat, c_cont, prof)
                loss_g = adv + info
            backward_step(loss_g, opt_g, scaler_g)
            for key, val in (
                ("loss_d", loss_d),
                ("loss_g_adv", adv),
                ("info_cat_ce", ce),
                ("info_cont_mse", mse),
                ("q_cat_acc", (q_cat.argmax(1) == c_cat).float().mean()),
            ):
                curves[key].append(float(val.detach()))
            step += 1
            bar.update()
            if (step - 1) % prof.log_every == 0:
                bar.set_postfix(d=f"{curves['loss_d'][-1]:.3f}", g=f"{adv.item():.3f}", ce=f"{ce.item():.3f}")
            if prof.max_seconds is not None:
                stopped_early = distributed.any_rank(time.perf_counter() - start > prof.max_seconds, env)
            if stopped_early or due(step, prof.checkpoint_every):
                checkpoint()
            if on_step is not None:
                on_step(step)
            if stopped_early:
                break
    bar.close()
    if not stopped_early:
        checkpoint()
    train_s += time.perf_counter() - start
    G.eval(), D.eval()
    if not env.is_main:
        return {}
    gan = InfoGAN(cfg, G.cpu(), D.cpu())
    save_checkpoint(
        run_dir / CHECKPOINT,
        config=cfg.to_dict(),
        profile=prof.to_dict(),
        step=step,
        generator=G.state_dict(),
        discriminator=D.state_dict(),
    )
    draw_curves(run_dir / "curves.png", curves, f"InfoGAN [{prof.name}] {step} steps")
    save_samples(gan, run_dir / "samples.png", seed=prof.seed)
    metrics = {
        "profile": prof.to_dict(),
        "config": cfg.to_dict(),
        "steps_done": step,
        "resumed_from_step": resumed_from,
        "stopped_by_max_seconds": stopped_early,
        "train_wall_s": round(train_s, 1),
        "s_per_step": round(train_s / max(step, 1), 4),
        "device": str(device),
        "precision": precision.describe(),
        "distributed": env.to_dict(),
        "seeds": {
            "weights_and_data_order": prof.seed,
            "latents": prof.seed + 1 + env.rank if env.enabled else prof.seed,
            "samples_png": prof.seed + 1,
        },
        "final": {k: float(np.mean(v[-50:])) for k, v in curves.items()},
        **unsupervised_diagnostics(gan, prepared),
    }
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def unsupervised_diagnostics(gan: InfoGAN, prepared: Any) -> dict[str, Any]:
    """Purity of Q's categorical code (vs the Fashion-MNIST class where known, else the category) on the
    catalogue images, and D-embedding precision."""
    from couturier.export.training.retrieval_eval import embed_images, evaluate_embeddings

    D = gan.discriminator.eval()
    device = next(D.parameters()).device
    codes = map_chunks(lambda x: D(x)[1].argmax(1), prepared.catalogue.images, device, chunk=EVAL_CHUNK)
    codes = codes.astype(np.int64)
    fm = np.asarray(prepared.catalogue.fm_class, dtype=np.int64)
    label, labels = ("fm_class", fm) if (fm >= 0).all() else ("category", np.asarray(prepared.catalogue.category))
    purity = sum(np.bincount(labels[codes == c]).max() for c in np.unique(codes)) / len(labels)
    enc = gan.encoder()
    db = embed_images(enc, prepared.catalogue.images)
    q = embed_images(enc, prepared.heldout.images)
    return {
        "q_code_purity": float(purity),
        "q_code_purity_label": label,  # the Fashion-MNIST class on the simulated world, else the category
        "codes_used": len(np.unique(codes)),
        "embed_dim": int(db.shape[1]),
        "embedding_norm_mean": float(np.linalg.norm(db, axis=1).mean()),
        "retrieval_precision": evaluate_embeddings(q, db, prepared.heldout, prepared.catalogue),
    }


def save_samples(gan: InfoGAN, path: Path, seed: int = 0, n_cols: int = 10) -> None:
    """Grid: row = categorical code value, column = shared noise; last 2 rows sweep the first continuous code."""
    cfg = gan.cfg
    g = torch.Generator().manual_seed(seed + 1)
    noise_latent, _, _ = sample_latent(cfg, n_cols, g)
    rows = []
    with torch.no_grad():
        for c in range(cfg.n_categories):
            lat = noise_latent.clone()
            lat[:, cfg.noise_dim : cfg.noise_dim + cfg.n_categories] = F.one_hot(
                torch.full((n_cols,), c), cfg.n_categories
            )
            rows.append(list(tensor_to_images(gan.generator.eval()(lat))))
        if cfg.n_continuous:
            for c in (0, 1):
                lat = noise_latent[:1].repeat(n_cols, 1)
                lat[:, cfg.noise_dim : cfg.noise_dim + cfg.n_categories] = F.one_hot(
                    torch.full((n_cols,), c), cfg.n_categories
                )
                lat[:, cfg.noise_dim + cfg.n_categories] = torch.linspace(-2, 2, n_cols)
                rows.append(list(tensor_to_images(gan.generator(lat))))
    labels = [f"code {c}" for c in range(cfg.n_categories)] + ["c0 sweep, code 0", "c0 sweep, code 1"][
        : 2 * bool(cfg.n_continuous)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, scale=3, labels=labels, label_w=90).save(path)


def load_infogan(run_dir: Path) -> InfoGAN:
    """Rebuild the trained InfoGAN (eval mode, CPU) from ``run_dir/checkpoint.pt``."""
    ckpt = load_checkpoint(Path(run_dir) / CHECKPOINT)
    cfg = InfoGANConfig.from_dict(ckpt["config"])
    gan = build_infogan(cfg)
    gan.generator.load_state_dict(ckpt["generator"])
    gan.discriminator.load_state_dict(ckpt["discriminator"])
    gan.generator.eval(), gan.discriminator.eval()
    gan.extras = {"profile": ckpt.get("profile"), "step": ckpt.get("step")}
    return gan
