"""Train DVBPR on (SIMULATED-shopper) purchases and compare it with popularity and BPR-MF.

Model selection as in the official code: the epoch with the best validation sampled AUC is kept.
Writes ``run_dir``::

    checkpoint.pt   config + profile + state dict (best validation epoch)
    metrics.json    test AUCs (sampled/full, all/cold) of DVBPR, popularity, BPR-MF and the
                    simulated oracle; simulated-oracle agreement; timings
    curves.png      BPR loss per step, validation AUC per epoch
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from couturier.export.models.dvbpr import Dvbpr, DvbprConfig, dvbpr_objective
from couturier.export.training.baselines import BprMfConfig, popularity_scorer, train_bpr_mf
from couturier.export.training.bpr_sampler import BprSampler
from couturier.export.training.common import (
    CHECKPOINT,
    images_to_tensor,
    load_checkpoint,
    pick_device,
    save_checkpoint,
    seed_everything,
    write_json,
)
from couturier.export.training.plots import draw_curves
from couturier.export.training.profiles import DvbprProfile, dvbpr_profile
from couturier.export.training.rec_eval import (
    Scorer,
    evaluate_scorer,
    oracle_agreement,
    oracle_scorer,
    sample_negatives,
)


@dataclass
class DvbprResult:
    """A trained model (eval mode, CPU), its metrics (as written) and where they were written."""

    model: Dvbpr
    metrics: dict[str, Any]
    run_dir: Path
    item_vectors: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.float32))


def dvbpr_scorer(model: Dvbpr, item_vectors: np.ndarray) -> Scorer:
    """All-item scores theta_u . Phi(image_i) for user batches, from precomputed item vectors."""
    theta = model.theta.detach().cpu().numpy()
    return lambda users: theta[users] @ item_vectors.T


def item_vectors(model: Dvbpr, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Phi of every catalogue image (N, K) float32 (uint8 (N,S,S,3) or a [-1,1] tensor)."""
    x = images_to_tensor(images) if isinstance(images, np.ndarray) else images
    return model.embed(x).cpu().numpy().astype(np.float32)


def train_dvbpr(
    prepared: Any,
    run_dir: Path | str,
    profile: str | DvbprProfile = "demo",
    *,
    baselines: bool = True,
    progress: bool = True,
    **overrides: Any,
) -> DvbprResult:
    """Train on ``prepared.interactions`` + ``prepared.catalogue.images``; evaluate on the test items."""
    prof = dvbpr_profile(profile, **overrides) if isinstance(profile, str) else profile
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(prof.threads)
    seed_everything(prof.seed)
    device = pick_device(prof.use_cuda)
    inter, images = prepared.interactions, prepared.catalogue.images
    cfg = DvbprConfig(
        n_users=inter.n_users, image_size=images.shape[1], k=prof.k, channels=tuple(prof.channels), hidden=prof.hidden
    )
    model = Dvbpr(cfg).to(device)
    data = images_to_tensor(images).to(device)
    opt = torch.optim.Adam(
        [
            {"params": model.encoder.parameters(), "weight_decay": prof.weight_decay},
            {"params": [model.theta], "weight_decay": 0.0},
        ],
        lr=prof.lr,
    )
    sampler = BprSampler(inter, seed=prof.seed)
    val_neg = sample_negatives(inter, prof.n_negatives, seed=prof.seed + 1)
    curves: dict[str, list[float]] = {"bpr_loss": [], "batch_pair_acc": [], "val_sampled_auc": []}
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    start, capped, epochs_done = time.perf_counter(), False, 0
    n_batches = -(-len(sampler.pairs) // prof.batch_size)
    for epoch in range(prof.epochs):
        model.train()
        bar = tqdm(
            sampler.epoch(prof.batch_size),
            total=n_batches,
            desc=f"dvbpr[{prof.name}] epoch {epoch + 1}",
            mininterval=2.0,
            disable=not progress,
        )
        for u, i, j in bar:
            u_t, i_t, j_t = (torch.from_numpy(a).to(device) for a in (u, i, j))
            terms = dvbpr_objective(model, u_t, data[i_t], data[j_t], prof.lambda_theta)
            opt.zero_grad(set_to_none=True)
            terms.loss.backward()
            opt.step()
            curves["bpr_loss"].append(terms.bpr.item())
            curves["batch_pair_acc"].append(float((terms.x_uij > 0).float().mean()))
            if prof.max_seconds is not None and time.perf_counter() - start > prof.max_seconds:
                capped = True
                break
        epochs_done = epoch + 1
        val = evaluate_scorer(dvbpr_scorer(model, item_vectors(model, data)), inter, val_neg, target="validation")
        curves["val_sampled_auc"].append(val["sampled_auc"])
        if progress:
            tqdm.write(
                f"epoch {epochs_done}: bpr {np.mean(curves['bpr_loss'][-n_batches:]):.4f} "
                f"val sampled AUC {val['sampled_auc']:.4f}"
            )
        if val["sampled_auc"] > best[0]:
            best = (val["sampled_auc"], epochs_done, copy.deepcopy(model.state_dict()))
        if capped:
            break
    train_s = time.perf_counter() - start
    model.load_state_dict(best[2])
    model = model.cpu().eval()
    vecs = item_vectors(model, images)
    save_checkpoint(
        run_dir / CHECKPOINT,
        config=cfg.to_dict(),
        profile=prof.to_dict(),
        best_epoch=best[1],
        state_dict=model.state_dict(),
    )
    draw_curves(run_dir / "curves.png", curves, f"DVBPR [{prof.name}] (simulated shoppers) best epoch {best[1]}")
    metrics: dict[str, Any] = {
        "data": "SIMULATED shoppers and purchases over real Fashion-MNIST garments (simulated colours)",
        "profile": prof.to_dict(),
        "config": cfg.to_dict(),
        "device": str(device),
        "epochs_done": epochs_done,
        "best_epoch": best[1],
        "best_val_sampled_auc": best[0],
        "stopped_by_max_seconds": capped,
        "train_wall_s": round(train_s, 1),
        "final_bpr_loss": float(np.mean(curves["bpr_loss"][-n_batches:])),
    }
    metrics.update(compare_recommenders(prepared, model, vecs, prof, baselines=baselines))
    write_json(run_dir / "metrics.json", metrics)
    return DvbprResult(model, metrics, run_dir, vecs)


def compare_recommenders(
    prepared: Any, model: Dvbpr, vecs: np.ndarray, prof: DvbprProfile, *, baselines: bool = True
) -> dict[str, Any]:
    """Test AUCs of DVBPR (+ popularity, BPR-MF, simulated oracle) on one shared negative sample."""
    inter = prepared.interactions
    neg = sample_negatives(inter, prof.n_negatives, seed=prof.seed + 2)
    scorers: dict[str, Scorer] = {"dvbpr": dvbpr_scorer(model, vecs)}
    timings: dict[str, float] = {}
    if baselines:
        scorers["popularity"] = popularity_scorer(inter)
        mf, mf_info = train_bpr_mf(inter, BprMfConfig(epochs=prof.bprmf_epochs, seed=prof.seed))
        scorers["bpr_mf"] = mf.scorer()
        timings["bpr_mf_train_wall_s"] = mf_info["train_wall_s"]
    oracle = getattr(prepared, "oracle", None)
    if oracle is not None:
        scorers["oracle_simulated"] = oracle_scorer(oracle, prepared.catalogue)
    out: dict[str, Any] = {"test_auc": {}, "oracle_agreement_simulated": {}, "baseline_timings": timings}
    for name, sc in scorers.items():
        t0 = time.perf_counter()
        out["test_auc"][name] = evaluate_scorer(sc, inter, neg, target="test")
        out["test_auc"][name]["eval_wall_s"] = round(time.perf_counter() - t0, 2)
        if oracle is not None and name != "oracle_simulated":
            out["oracle_agreement_simulated"][name] = oracle_agreement(sc, oracle, prepared.catalogue, seed=prof.seed)
    return out


def load_dvbpr(run_dir: Path | str) -> Dvbpr:
    """The trained DVBPR (eval mode, CPU) from ``run_dir/checkpoint.pt``."""
    ckpt = load_checkpoint(Path(run_dir) / CHECKPOINT)
    model = Dvbpr(DvbprConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
