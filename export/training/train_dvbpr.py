"""Train DVBPR on purchases and compare it with popularity and BPR-MF.

Model selection as in the official code: the epoch with the best validation sampled AUC is kept;
with ``patience`` set, training stops after that many epochs without a better one. The catalogue is
streamed: each step gathers its users' bought and negative item images from the (memory-mapped)
image store (:mod:`.loaders`), and evaluation embeds the catalogue in chunks. Under torchrun every
rank draws the same BPR triples and trains on its share of each batch (:mod:`.distributed`).
Writes ``run_dir`` (rank 0)::

    checkpoint.pt   config + profile + state dict (best validation epoch)
    resume.pt       resumable state every ``checkpoint_every`` steps and at each epoch end
    metrics.json    test AUCs (sampled/full, all/cold) of DVBPR, popularity, BPR-MF and the
                    simulated oracle; simulated-oracle agreement; seeds; timings
    curves.png      BPR loss per step, validation AUC per epoch
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from couturier.export.models.dvbpr import Dvbpr, DvbprConfig, dvbpr_objective
from couturier.export.training import distributed
from couturier.export.training.baselines import BprMfConfig, popularity_scorer, train_bpr_mf
from couturier.export.training.bpr_sampler import BprSampler
from couturier.export.training.common import (
    CHECKPOINT,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    write_json,
)
from couturier.export.training.loaders import EVAL_CHUNK, map_chunks, stream_batches
from couturier.export.training.plots import draw_curves
from couturier.export.training.precision import backward_step, resolve_precision
from couturier.export.training.profiles import DvbprProfile, dvbpr_profile
from couturier.export.training.rec_eval import (
    Scorer,
    evaluate_scorer,
    oracle_agreement,
    oracle_scorer,
    sample_negatives,
)
from couturier.export.training.resume import capture_rng, due, load_resume, load_scaler, restore_rng, save_resume


@dataclass
class DvbprResult:
    """A trained model (eval mode, CPU), its metrics (as written) and where they were written.

    Under torchrun only rank 0 evaluates and writes: the other ranks get the model and empty metrics.
    """

    model: Dvbpr
    metrics: dict[str, Any]
    run_dir: Path
    item_vectors: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.float32))


def data_label(prepared: Any) -> str:
    """What a run was trained on, for its metrics: the simulated world, or the dataset's name and source."""
    if getattr(prepared, "provenance", "simulated") == "simulated":
        return "SIMULATED shoppers and purchases over real Fashion-MNIST garments (simulated colours)"
    return f"{prepared.provenance} data: {getattr(prepared, 'name', '')} ({getattr(prepared, 'source', '')})"


def dvbpr_scorer(model: Dvbpr, item_vectors: np.ndarray) -> Scorer:
    """All-item scores theta_u . Phi(image_i) for user batches, from precomputed item vectors."""
    theta = model.theta.detach().cpu().numpy()
    return lambda users: theta[users] @ item_vectors.T


def item_vectors(model: Dvbpr, images: Any, chunk: int = EVAL_CHUNK) -> np.ndarray:
    """Phi of every catalogue image (N, K) float32, in chunks on the model's device (eval mode).

    ``images``: the uint8 (N,S,S,3) store (streamed), or an already converted [-1,1] tensor.
    """
    if isinstance(images, torch.Tensor):
        return model.embed(images).cpu().numpy().astype(np.float32)
    was = model.training
    model.eval()
    vecs = map_chunks(model.encoder, images, model.theta.device, chunk=chunk)
    model.train(was)
    return vecs.reshape(len(images), model.cfg.k)


class BprStep(torch.nn.Module):
    """DVBPR's batch objective as a module: DistributedDataParallel synchronises gradients through
    a module's forward. Returns (loss, bpr, x_uij)."""

    def __init__(self, model: Dvbpr, lambda_theta: float) -> None:
        super().__init__()
        self.model = model
        self.lambda_theta = lambda_theta

    def forward(
        self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        terms = dvbpr_objective(self.model, users, pos, neg, self.lambda_theta)
        return terms.loss, terms.bpr, terms.x_uij


@dataclass
class _Progress:
    """Where a DVBPR training is: what resume.pt stores besides the state dicts."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimiser steps in all
    epoch_rng: dict[str, Any] | None = None  # the BPR sampler's state at the start of the current epoch
    best_auc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    finished: bool = False  # stopped early: nothing left to train
    train_s: float = 0.0  # training wall time of earlier sessions
    curves: dict[str, list[float]] = field(
        default_factory=lambda: {"bpr_loss": [], "batch_pair_acc": [], "val_sampled_auc": []}
    )


def train_dvbpr(
    prepared: Any,
    run_dir: Path | str,
    profile: str | DvbprProfile = "demo",
    *,
    baselines: bool = True,
    progress: bool = True,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    **overrides: Any,
) -> DvbprResult:
    """Train on ``prepared.interactions`` + ``prepared.catalogue.images``; evaluate on the test items.

    ``resume`` continues from ``run_dir/resume.pt`` when there is one (a fresh start otherwise);
    ``on_step(step)`` is called after every optimiser step (progress reporting, tests).
    """
    prof = dvbpr_profile(profile, **overrides) if isinstance(profile, str) else profile
    run_dir = Path(run_dir)
    env = distributed.init_from_env(prof.use_cuda)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(prof.threads)
    seed_everything(prof.seed)
    device = distributed.device_for(env, prof.use_cuda)
    precision = resolve_precision(prof.amp, prof.amp_dtype, device)
    inter, images = prepared.interactions, prepared.catalogue.images
    cfg = DvbprConfig(
        n_users=inter.n_users, image_size=images.shape[1], k=prof.k, channels=tuple(prof.channels), hidden=prof.hidden
    )
    model = Dvbpr(cfg).to(device)
    opt = torch.optim.Adam(
        [
            {"params": model.encoder.parameters(), "weight_decay": prof.weight_decay},
            {"params": [model.theta], "weight_decay": 0.0},
        ],
        lr=prof.lr,
    )
    scaler = precision.scaler()
    sampler = BprSampler(inter, seed=prof.seed)
    val_neg = sample_negatives(inter, prof.n_negatives, seed=prof.seed + 1) if env.is_main else None
    st = _Progress()
    best_state = copy.deepcopy(model.state_dict())
    saved = load_resume(run_dir, prof.to_dict()) if resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        load_scaler(scaler, saved["scaler"])
        best_state = saved["best_state"]
        st = _Progress(**saved["progress"])
        restore_rng(saved["rng"], numpy_rngs={"bpr_sampler": sampler.rng})
    resumed_from = st.step
    step_fn = distributed.wrap(BprStep(model, prof.lambda_theta), env, device)

    def checkpoint() -> None:
        save_resume(
            run_dir,
            env,
            model=model.state_dict(),
            optimizer=opt.state_dict(),
            scaler=scaler.state_dict(),
            best_state=best_state,
            progress={**st.__dict__, "train_s": st.train_s + time.perf_counter() - start},
            rng=capture_rng(numpy_rngs={"bpr_sampler": sampler.rng}),
            profile=prof.to_dict(),
        )

    start, capped = time.perf_counter(), False
    n_batches = -(-len(sampler.pairs) // prof.batch_size)
    while st.epoch < prof.epochs and not st.finished:
        if st.batch == 0 or st.epoch_rng is None:
            st.batch, st.epoch_rng = 0, dict(sampler.rng.bit_generator.state)
        else:  # resumed mid-epoch: draw this epoch's triples again, skip the ones done
            sampler.rng.bit_generator.state = st.epoch_rng
        triples = list(sampler.epoch(prof.batch_size))[st.batch :]
        shards = [distributed.shard(len(u), env) for u, _, _ in triples]
        index = [np.concatenate([i[r], j[r]]) for (_, i, j), r in zip(triples, shards)]
        model.train()
        bar = tqdm(
            zip(triples, shards, stream_batches(images, index, device, workers=prof.workers)),
            total=len(triples),
            desc=f"dvbpr[{prof.name}] epoch {st.epoch + 1}",
            mininterval=2.0,
            disable=not (progress and env.is_main),
        )
        for (u, _, _), rows, x in bar:
            pos, neg = x.chunk(2)
            with precision.autocast():
                loss, bpr, x_uij = step_fn(torch.from_numpy(u[rows]).to(device), pos, neg)
            backward_step(loss, opt, scaler)
            st.curves["bpr_loss"].append(bpr.item())
            st.curves["batch_pair_acc"].append(float((x_uij > 0).float().mean()))
            st.batch, st.step = st.batch + 1, st.step + 1
            if prof.max_seconds is not None:
                capped = distributed.any_rank(time.perf_counter() - start > prof.max_seconds, env)
            if capped or due(st.step, prof.checkpoint_every):
                checkpoint()  # a capped run resumes from here, mid-epoch
            if on_step is not None:
                on_step(st.step)
            if capped:
                break
        val = _validate(model, prepared, val_neg, env)
        st.curves["val_sampled_auc"].append(val)
        if progress and env.is_main:
            tqdm.write(
                f"epoch {st.epoch + 1}: bpr {np.mean(st.curves['bpr_loss'][-n_batches:]):.4f} val sampled AUC {val:.4f}"
            )
        if capped:  # this session keeps the partial epoch's validation; resume.pt stays before it
            if val > st.best_auc:
                st.best_auc, st.best_epoch, best_state = val, st.epoch + 1, copy.deepcopy(model.state_dict())
            st.epoch += 1
            break
        st.epoch, st.batch = st.epoch + 1, 0
        if val > st.best_auc:
            st.best_auc, st.best_epoch, st.bad_epochs = val, st.epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            st.bad_epochs += 1
        st.finished = prof.patience is not None and st.bad_epochs >= prof.patience
        checkpoint()
    train_s = st.train_s + time.perf_counter() - start
    final_bpr = distributed.all_mean([float(np.mean(st.curves["bpr_loss"][-n_batches:] or [np.nan]))], env)[0]
    model.load_state_dict(best_state)
    model.eval()
    if not env.is_main:
        return DvbprResult(model.cpu(), {}, run_dir)
    vecs = item_vectors(model, images)
    model = model.cpu()
    save_checkpoint(
        run_dir / CHECKPOINT,
        config=cfg.to_dict(),
        profile=prof.to_dict(),
        best_epoch=st.best_epoch,
        state_dict=model.state_dict(),
    )
    draw_curves(run_dir / "curves.png", st.curves, f"DVBPR [{prof.name}] best epoch {st.best_epoch}")
    metrics: dict[str, Any] = {
        "data": data_label(prepared),
        "profile": prof.to_dict(),
        "config": cfg.to_dict(),
        "device": str(device),
        "precision": precision.describe(),
        "distributed": env.to_dict(),
        "seeds": dvbpr_seeds(prof),
        "epochs_done": st.epoch,
        "steps_done": st.step,
        "resumed_from_step": resumed_from,
        "best_epoch": st.best_epoch,
        "best_val_sampled_auc": st.best_auc,
        "stopped_early": st.finished,
        "stopped_by_max_seconds": capped,
        "train_wall_s": round(train_s, 1),
        "final_bpr_loss": final_bpr,
    }
    metrics.update(compare_recommenders(prepared, model, vecs, prof, baselines=baselines))
    write_json(run_dir / "metrics.json", metrics)
    return DvbprResult(model, metrics, run_dir, vecs)


def _validate(model: Dvbpr, prepared: Any, negatives: np.ndarray | None, env: distributed.DistEnv) -> float:
    """Validation sampled AUC, computed on rank 0 (the others receive it: they stop together)."""
    auc = 0.0
    if env.is_main and negatives is not None:
        scorer = dvbpr_scorer(model, item_vectors(model, prepared.catalogue.images))
        auc = evaluate_scorer(scorer, prepared.interactions, negatives, target="validation")["sampled_auc"]
    return float(distributed.from_main(auc, env))


def dvbpr_seeds(prof: DvbprProfile) -> dict[str, int]:
    """Every seed a DVBPR run uses (recorded in its metrics)."""
    return {
        "weights_and_bpr_sampler": prof.seed,
        "validation_negatives": prof.seed + 1,
        "test_negatives": prof.seed + 2,
        "bpr_mf": prof.seed,
        "oracle_agreement": prof.seed,
    }


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
