"""Train SynthTriplet's query generator Gq and evaluate multimodal retrieval (Recall@10/50).

Per step (``n_critic`` critic updates, then one Gq update)::

    critic:  C(Gq(r,t), t) - C(x_target, t) + GP            (WGAN-GP, lambda 10)
    Gq:      -lambda_adv C(Gq(r,t), t)
             + lambda_triplet max(0, |E(g)-E(x_target)| - |E(g)-E(r)| + margin)   (E frozen InfoGAN-D)
             + lambda_l1 |g - x_target|_1                     (demo only: CPU-budget convergence aid)

TTUR: Adam lr_D > lr_G (paper 4e-5 / 1e-5; demo 4e-4 / 1e-4, same 4:1 ratio), betas (0.5, 0.9).
Training pairs use catalogue references; evaluation uses HELD-OUT references (Fashion-MNIST test
images, never seen) with targets in the catalogue. Writes ``run_dir``: checkpoint.pt, metrics.json,
curves.png, samples.png (rows: reference | text | synthetic | target | top-3 found with synthetic).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from couturier.export.models.synthtriplet import (
    Critic,
    QueryGenerator,
    SynthTripletConfig,
    gradient_penalty,
    triplet_loss,
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
from couturier.export.training.data_access import FM_NOUNS, colour_names
from couturier.export.training.modifications import Modification, describe, make_modifications
from couturier.export.training.plots import draw_curves, image_grid
from couturier.export.training.profiles import SynthTripletProfile, synthtriplet_profile
from couturier.export.training.retrieval_eval import embed_images, rank_of, recall_at_k, top_k


def encode_texts(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Unique texts -> 384-d MiniLM embeddings (sentence-transformers, offline)."""
    from couturier.export.models.text_encoder import encode_reference

    uniq = sorted(set(texts))
    return dict(zip(uniq, encode_reference(uniq)))


def train_synthtriplet(
    prepared: Any,
    run_dir: Path,
    infogan_run_dir: Path,
    profile: str | SynthTripletProfile = "demo",
    eval_pairs: int | None = 1000,
    text_fn: Callable[[Sequence[str]], dict[str, np.ndarray]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train Gq against the frozen InfoGAN-D embedding of ``infogan_run_dir``; evaluate; write run_dir.

    ``text_fn`` maps texts to {text: 384-d vector}; default MiniLM via sentence-transformers.
    """
    text_fn = text_fn or encode_texts
    from couturier.export.training.train_infogan import load_infogan

    prof = synthtriplet_profile(profile, **overrides) if isinstance(profile, str) else profile
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(prof.threads)
    gen = seed_everything(prof.seed)
    device = pick_device(prof.use_cuda)
    cat, held = prepared.catalogue, prepared.heldout
    names = colour_names(prepared)
    t_setup = time.perf_counter()
    train_mods = make_modifications(cat, cat, names, per_reference=prof.pairs_per_reference, seed=prof.seed)
    eval_mods = make_modifications(held, cat, names, per_reference=2, seed=prof.seed + 1)
    if eval_pairs is not None and len(eval_mods) > eval_pairs:
        keep = np.random.default_rng(prof.seed).choice(len(eval_mods), eval_pairs, replace=False)
        eval_mods = [eval_mods[i] for i in sorted(keep)]
    text_embed = text_fn([m.text for m in train_mods + eval_mods])
    setup_s = time.perf_counter() - t_setup

    encoder = load_infogan(infogan_run_dir).encoder().to(device)
    cfg = SynthTripletConfig(
        image_size=cat.images.shape[1], channels=tuple(prof.channels), critic_channels=tuple(prof.critic_channels)
    )
    G, C = QueryGenerator(cfg).to(device), Critic(cfg).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=prof.lr_g, betas=(0.5, 0.9))
    opt_c = torch.optim.Adam(C.parameters(), lr=prof.lr_d, betas=(0.5, 0.9))
    images = images_to_tensor(cat.images)
    ref_idx = torch.tensor([m.reference for m in train_mods])
    tgt_idx = torch.tensor([m.target for m in train_mods])
    txt = torch.from_numpy(np.stack([text_embed[m.text] for m in train_mods]))
    curves: dict[str, list[float]] = {k: [] for k in ("critic_wdist", "gp", "g_adv", "triplet", "l1")}
    start, stopped_early, step = time.perf_counter(), False, 0
    bar = tqdm(range(prof.steps), desc=f"synthtriplet[{prof.name}]", mininterval=2.0)
    for step in bar:
        for _ in range(prof.n_critic):
            b = torch.randint(0, len(train_mods), (prof.batch_size,), generator=gen)
            ref, tgt, t = images[ref_idx[b]].to(device), images[tgt_idx[b]].to(device), txt[b].to(device)
            with torch.no_grad():
                fake = G(ref, t)
            w = C(tgt, t).mean() - C(fake, t).mean()
            gp = gradient_penalty(C, tgt, fake, t, prof.gp_lambda, gen)
            opt_c.zero_grad(set_to_none=True)
            (gp - w).backward()
            opt_c.step()
        fake = G(ref, t)
        adv = -C(fake, t).mean()
        with torch.no_grad():
            e_pos, e_neg = encoder(tgt), encoder(ref)
        trip = triplet_loss(encoder(fake), e_pos, e_neg, prof.margin)
        l1 = (fake - tgt).abs().mean()
        loss = prof.lambda_adv * adv + prof.lambda_triplet * trip + prof.lambda_l1 * l1
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        for key, val in (("critic_wdist", w), ("gp", gp), ("g_adv", adv), ("triplet", trip), ("l1", l1)):
            curves[key].append(float(val.detach()))
        if step % prof.log_every == 0:
            bar.set_postfix(w=f"{w.item():.2f}", trip=f"{trip.item():.3f}", l1=f"{l1.item():.3f}")
        if prof.max_seconds is not None and time.perf_counter() - start > prof.max_seconds:
            stopped_early = True
            break
    train_s = time.perf_counter() - start
    G.eval().cpu(), C.eval().cpu()
    save_checkpoint(
        run_dir / CHECKPOINT,
        config=cfg.to_dict(),
        profile=prof.to_dict(),
        step=step + 1,
        generator=G.state_dict(),
        critic=C.state_dict(),
        infogan_run_dir=str(infogan_run_dir),
    )
    draw_curves(run_dir / "curves.png", curves, f"SynthTriplet [{prof.name}] {step + 1} steps")
    t_eval = time.perf_counter()
    evaluation = evaluate_multimodal(
        G, encoder.cpu(), prepared, eval_mods, text_embed, run_dir / "samples.png", text_fn=text_fn
    )
    metrics = {
        "profile": prof.to_dict(),
        "config": cfg.to_dict(),
        "steps_done": step + 1,
        "stopped_by_max_seconds": stopped_early,
        "train_wall_s": round(train_s, 1),
        "s_per_step": round(train_s / (step + 1), 4),
        "setup_s": round(setup_s, 1),
        "eval_s": round(time.perf_counter() - t_eval, 1),
        "device": str(device),
        "train_pairs": describe(train_mods),
        "eval_pairs": describe(eval_mods),
        "final": {k: float(np.mean(v[-50:])) for k, v in curves.items()},
        **evaluation,
    }
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def synthesize(G: QueryGenerator, references: np.ndarray, texts: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run Gq (eval mode, CPU) over uint8 references and (N,384) text vectors -> uint8 images."""
    out = []
    G = G.eval()
    with torch.no_grad():
        for i in range(0, len(references), batch_size):
            out.append(
                tensor_to_images(
                    G(images_to_tensor(references[i : i + batch_size]), torch.from_numpy(texts[i : i + batch_size]))
                )
            )
    return np.concatenate(out)


def evaluate_multimodal(
    G: QueryGenerator,
    encoder: torch.nn.Module,
    prepared: Any,
    mods: Sequence[Modification],
    text_embed: dict[str, np.ndarray],
    samples_path: Path | None = None,
    ks: Sequence[int] = (10, 50),
    text_fn: Callable[[Sequence[str]], dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Recall@K of the target product for synthetic-image, image-only and text-only queries."""
    cat, held = prepared.catalogue, prepared.heldout
    db = embed_images(encoder, cat.images)
    refs = held.images[[m.reference for m in mods]]
    tvec = np.stack([text_embed[m.text] for m in mods]).astype(np.float32)
    target = np.array([m.target for m in mods])
    synth = synthesize(G, refs, tvec)
    q_syn, q_img = embed_images(encoder, synth), embed_images(encoder, refs)
    # text-only: MiniLM(query text) vs MiniLM(attribute caption "a <colour> <noun>") of each product
    names = colour_names(prepared)
    captions = [f"a {names[c]} {FM_NOUNS[f]}" for f, c in zip(cat.fm_class, cat.colour)]
    cap_vec = (text_fn or encode_texts)(captions)
    db_txt = np.stack([cap_vec[c] for c in captions])
    queries = {"synthetic_image": (q_syn, db), "image_only": (q_img, db), "text_only": (tvec, db_txt)}
    kinds = sorted({m.kind for m in mods})
    kind_arr = np.array([m.kind for m in mods])
    want_fm, want_col = np.array([m.target_fm_class for m in mods]), np.array([m.target_colour for m in mods])
    result: dict[str, Any] = {"n_eval_pairs": len(mods), "recall": {}, "recall_by_kind": {}, "attribute_p@10": {}}
    for name, (q, d) in queries.items():
        ranks = rank_of(q, d, target)
        result["recall"][name] = {**recall_at_k(ranks, ks), "median_rank": float(np.median(ranks) + 1)}
        result["recall_by_kind"][name] = {k: recall_at_k(ranks[kind_arr == k], ks) for k in kinds}
        nn10 = top_k(q, d, 10)
        ok = (np.asarray(cat.fm_class)[nn10] == want_fm[:, None]) & (np.asarray(cat.colour)[nn10] == want_col[:, None])
        result["attribute_p@10"][name] = float(ok.mean())
    result["synthetic_l1_to_target"] = float(
        np.abs(synth.astype(np.float32) - cat.images[target].astype(np.float32)).mean() / 127.5
    )
    result["text_only_note"] = "MiniLM(text) vs MiniLM('a <colour> <class>') captions built from catalogue attributes"
    if samples_path is not None:
        save_samples(samples_path, refs, synth, cat.images, mods, top_k(q_syn, db, 3))
    return result


def save_samples(
    path: Path,
    refs: np.ndarray,
    synth: np.ndarray,
    cat_images: np.ndarray,
    mods: Sequence[Modification],
    nn3: np.ndarray,
    n: int = 14,
) -> None:
    """Rows: text label | reference | synthetic | target | top-3 catalogue hits for the synthetic query."""
    pick = np.linspace(0, len(mods) - 1, min(n, len(mods))).round().astype(int)
    rows = [[refs[i], synth[i], cat_images[mods[i].target], *cat_images[nn3[i]]] for i in pick]
    labels = [mods[i].text for i in pick]
    image_grid(rows, scale=3, labels=labels, label_w=150).save(path)


def load_synthtriplet(run_dir: Path) -> tuple[QueryGenerator, SynthTripletConfig, dict[str, Any]]:
    """Rebuild the trained Gq (eval, CPU); returns (generator, config, checkpoint extras)."""
    ckpt = load_checkpoint(Path(run_dir) / CHECKPOINT)
    cfg = SynthTripletConfig.from_dict(ckpt["config"])
    G = QueryGenerator(cfg)
    G.load_state_dict(ckpt["generator"])
    return G.eval(), cfg, {k: ckpt.get(k) for k in ("profile", "step", "infogan_run_dir")}
