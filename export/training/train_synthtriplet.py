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
from couturier.export.training import distributed
from couturier.export.training.common import (
    CHECKPOINT,
    images_to_tensor,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    tensor_to_images,
    write_json,
)
from couturier.export.training.loaders import gather_rows, to_model_input
from couturier.export.training.modifications import (
    Modification,
    TextVocabulary,
    describe,
    make_modifications,
    text_vocabulary,
)
from couturier.export.training.plots import draw_curves, image_grid
from couturier.export.training.precision import Precision, resolve_precision
from couturier.export.training.profiles import SynthTripletProfile, synthtriplet_profile
from couturier.export.training.resume import capture_rng, due, load_resume, restore_rng, save_resume
from couturier.export.training.retrieval_eval import embed_images, rank_of, recall_at_k, top_k

#: Why a dataset gets no multimodal model (the retrieval service repeats it as FAILED_PRECONDITION).
NO_VOCABULARY = (
    "the dataset has no categorical attribute usable for text changes (e.g. a colour column with 2 to 64 "
    "values, each on at least 2 products), so no multimodal (image + text) model is trained"
)


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
    *,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train Gq against the frozen InfoGAN-D embedding of ``infogan_run_dir``; evaluate; write run_dir.

    ``text_fn`` maps texts to {text: 384-d vector}; default MiniLM via sentence-transformers.
    ``resume`` continues from ``run_dir/resume.pt`` when there is one; ``on_step(step)`` is called
    after every step. No data parallelism: under torchrun rank 0 trains alone (the others return {}).
    Mixed precision in bfloat16 only (float16 would need the gradient penalty scaled: it runs in float32).
    """
    text_fn = text_fn or encode_texts
    from couturier.export.training.train_infogan import load_infogan

    prof = synthtriplet_profile(profile, **overrides) if isinstance(profile, str) else profile
    run_dir = Path(run_dir)
    env = distributed.init_from_env(prof.use_cuda)
    if not env.is_main:
        return {}
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(prof.threads)
    gen = seed_everything(prof.seed)
    device = distributed.device_for(env, prof.use_cuda)
    precision = resolve_precision(prof.amp, prof.amp_dtype, device)
    if precision.dtype == torch.float16:
        precision = Precision(device.type)
    cat, held = prepared.catalogue, prepared.heldout
    vocab = text_vocabulary(cat)
    if vocab is None:
        raise ValueError(NO_VOCABULARY)
    t_setup = time.perf_counter()
    train_mods = make_modifications(cat, cat, vocab, per_reference=prof.pairs_per_reference, seed=prof.seed)
    eval_mods = make_modifications(held, cat, vocab, per_reference=2, seed=prof.seed + 1)
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
    ref_idx = np.array([m.reference for m in train_mods])
    tgt_idx = np.array([m.target for m in train_mods])
    txt = torch.from_numpy(np.stack([text_embed[m.text] for m in train_mods]))
    curves: dict[str, list[float]] = {k: [] for k in ("critic_wdist", "gp", "g_adv", "triplet", "l1")}
    stopped_early, step, train_s = False, 0, 0.0
    saved = load_resume(run_dir, prof.to_dict()) if resume else None
    if saved is not None:
        G.load_state_dict(saved["generator"])
        C.load_state_dict(saved["critic"])
        opt_g.load_state_dict(saved["opt_g"])
        opt_c.load_state_dict(saved["opt_c"])
        step, train_s, curves = saved["step"], saved["train_s"], saved["curves"]
        restore_rng(saved["rng"], {"gen": gen})
    resumed_from = step

    def checkpoint() -> None:
        save_resume(
            run_dir,
            env,
            generator=G.state_dict(),
            critic=C.state_dict(),
            opt_g=opt_g.state_dict(),
            opt_c=opt_c.state_dict(),
            step=step,
            curves=curves,
            train_s=train_s + time.perf_counter() - start,
            rng=capture_rng({"gen": gen}),
            profile=prof.to_dict(),
        )

    def batch(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reference, target, text) of training pairs ``rows``: only their images are read from the store."""
        r = rows.numpy()
        ref = to_model_input(gather_rows(cat.images, ref_idx[r]), device)
        return ref, to_model_input(gather_rows(cat.images, tgt_idx[r]), device), txt[rows].to(device)

    start = time.perf_counter()
    bar = tqdm(total=prof.steps, initial=step, desc=f"synthtriplet[{prof.name}]", mininterval=2.0)
    # the pairs of a step are drawn from the step's random stream (interleaved with the gradient
    # penalty's), so they are gathered here rather than ahead in loader workers
    while step < prof.steps:
        for _ in range(prof.n_critic):
            ref, tgt, t = batch(torch.randint(0, len(train_mods), (prof.batch_size,), generator=gen))
            with precision.autocast():
                with torch.no_grad():
                    fake = G(ref, t)
                w = C(tgt, t).mean() - C(fake, t).mean()
                gp = gradient_penalty(C, tgt, fake, t, prof.gp_lambda, gen)
            opt_c.zero_grad(set_to_none=True)
            (gp - w).backward()
            opt_c.step()
        with precision.autocast():
            fake = G(ref, t)
            adv = -C(fake, t).mean()
            with torch.no_grad():
                e_pos, e_neg = encoder(tgt), encoder(ref)
            trip = triplet_loss(encoder(fake), e_pos, e_neg, prof.margin)
            l1 = (fake.float() - tgt).abs().mean()
            loss = prof.lambda_adv * adv + prof.lambda_triplet * trip + prof.lambda_l1 * l1
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        for key, val in (("critic_wdist", w), ("gp", gp), ("g_adv", adv), ("triplet", trip), ("l1", l1)):
            curves[key].append(float(val.detach()))
        step += 1
        bar.update()
        if (step - 1) % prof.log_every == 0:
            bar.set_postfix(w=f"{w.item():.2f}", trip=f"{trip.item():.3f}", l1=f"{l1.item():.3f}")
        stopped_early = prof.max_seconds is not None and time.perf_counter() - start > prof.max_seconds
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
    steps_done = step
    G.eval().cpu(), C.eval().cpu()
    save_checkpoint(
        run_dir / CHECKPOINT,
        config=cfg.to_dict(),
        profile=prof.to_dict(),
        step=steps_done,
        generator=G.state_dict(),
        critic=C.state_dict(),
        infogan_run_dir=str(infogan_run_dir),
    )
    draw_curves(run_dir / "curves.png", curves, f"SynthTriplet [{prof.name}] {steps_done} steps")
    t_eval = time.perf_counter()
    evaluation = evaluate_multimodal(
        G, encoder.cpu(), prepared, vocab, eval_mods, text_embed, run_dir / "samples.png", text_fn=text_fn
    )
    metrics = {
        "profile": prof.to_dict(),
        "config": cfg.to_dict(),
        "steps_done": steps_done,
        "resumed_from_step": resumed_from,
        "stopped_by_max_seconds": stopped_early,
        "train_wall_s": round(train_s, 1),
        "s_per_step": round(train_s / max(steps_done, 1), 4),
        "setup_s": round(setup_s, 1),
        "eval_s": round(time.perf_counter() - t_eval, 1),
        "device": str(device),
        "precision": precision.describe(),
        "seeds": {"training": prof.seed, "train_pairs": prof.seed, "eval_pairs": prof.seed + 1},
        "vocabulary": vocab.as_dict(),
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
    vocab: TextVocabulary,
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
    # text-only: MiniLM(query text) vs MiniLM(label caption "a <value> <noun>") of each product
    cat_kind, cat_val = vocab.kinds(cat), vocab.attribute_codes(cat)
    captions = [vocab.caption(int(f), int(c)) for f, c in zip(cat_kind, cat_val)]
    cap_vec = (text_fn or encode_texts)(captions)
    db_txt = np.stack([cap_vec[c] for c in captions])
    queries = {"synthetic_image": (q_syn, db), "image_only": (q_img, db), "text_only": (tvec, db_txt)}
    kinds = sorted({m.kind for m in mods})
    kind_arr = np.array([m.kind for m in mods])
    want_kind, want_val = np.array([m.target_kind for m in mods]), np.array([m.target_value for m in mods])
    result: dict[str, Any] = {"n_eval_pairs": len(mods), "recall": {}, "recall_by_kind": {}, "attribute_p@10": {}}
    for name, (q, d) in queries.items():
        ranks = rank_of(q, d, target)
        result["recall"][name] = {**recall_at_k(ranks, ks), "median_rank": float(np.median(ranks) + 1)}
        result["recall_by_kind"][name] = {k: recall_at_k(ranks[kind_arr == k], ks) for k in kinds}
        nn10 = top_k(q, d, 10)
        ok = (cat_kind[nn10] == want_kind[:, None]) & (cat_val[nn10] == want_val[:, None])
        result["attribute_p@10"][name] = float(ok.mean())
    result["synthetic_l1_to_target"] = float(
        np.abs(synth.astype(np.float32) - cat.images[target].astype(np.float32)).mean() / 127.5
    )
    result["text_only_note"] = (
        f"MiniLM(text) vs MiniLM('a <{vocab.attribute}> <{vocab.kind_label}>') captions built from catalogue labels"
    )
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
