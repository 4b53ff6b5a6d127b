"""Export the latent-optimisation gradient models (pref_grad, inv_grad, shift_grad) and check them.

Each model is a standard-op ONNX file (opset >= 18, one file) computing an objective of
:mod:`couturier.export.objectives`, its gradient with respect to the latent input and auxiliary
outputs, so one Triton call serves one optimiser step. Signatures (``B`` = dynamic ``batch``,
``n`` = dynamic ``shifts``; ``S`` image size, ``C`` categories, ``K`` the DVBPR dimension):

Every input and output has the batch on axis 0 and rows are independent, so the models are
published batched and Triton's dynamic batcher merges concurrent requests into one execution.
Nothing per user enters a graph: the preference score is linear in the user vector, so a row
carries ONE effective user vector and the service does the per-user arithmetic (numpy, U x K).

``pref_grad``  (preference maximisation, Kang et al. 2017)
    inputs  ``z (B,Dz)``, ``category (B,C)``, ``theta (B,K)`` (the row's user vector),
            ``realism_weight (B,1)``
    outputs ``value (B,)`` = theta_b . Phi(G(z_b)) - realism_weight_b * min(D(G(z_b)) - m, 0)^2,
            ``grad_z (B,Dz)``, ``phi (B,K)`` = Phi(G(z_b)), ``image (B,3,S,S)``,
            ``realism (B,)`` = D(G(z_b))

    * one user: ``theta[b]`` = that user's vector.  * MEAN group objective: ``theta[b]`` = the
      group's mean vector (theta enters linearly, so this is U users with weight 1/U).
    * weights ``w (B,U)`` over users ``theta_u (U,K)``: ``theta = w @ theta_u``; the per-user scores
      are ``phi @ theta_u.T`` (computed by the service from the ``phi`` output).
    * NON-LINEAR group objective F(s_1..s_U) of the per-user scores (e.g. the smooth share of users
      for whom the design enters their top-k, ``mean_u sigmoid((s_u - tau_u) / T)``): compute the
      scores from ``phi`` of a call, send ``theta[b] = sum_u dF/ds_u theta_u`` (at those scores) and
      use ``grad_z`` of that call (chain rule). The service may reuse the previous step's scores to
      save the extra call.
    * Kang's code: the group's mean theta, ``realism_weight = 1.0``; Adam lr 0.05, 10 steps.

``inv_grad``  (GAN inversion of a seller photo; GIGS)
    inputs  ``z (B,Dz)``, ``category (B,C)``, ``target (B,3,S,S)`` in [-1, 1]
    outputs ``value (B,)`` = mean pixel MSE + lambda * perceptual distance (to MINIMISE),
            ``grad_z (B,Dz)``, ``image (B,3,S,S)`` (stream the trajectory without another call)

    lambda = ``perceptual_weight`` (default 1.0); the perceptual net is the DVBPR encoder's conv
    features (:mod:`couturier.export.models.perceptual`), since LPIPS weights are not offline.

``shift_grad``  (GIGS seller shifts)
    inputs  ``base_z (B,Dz)``, ``shifts (B,n,Dz)``, ``category (B,C)``, ``theta (B,K)`` (as in
            pref_grad), ``weights (B,2)`` = (diversity_weight, realism_weight)
    outputs ``value (B,)``, ``grad_shifts (B,n,Dz)``, ``images (B,n,3,S,S)``, ``pref (B,n)``,
            ``diversity (B,)`` (the unweighted penalty)

    One row is one base latent with its ``n`` variants: the diversity penalty couples the variants
    of a row (its gradient runs through the generator, so it stays in the graph), never two rows.
    Triton merges concurrent requests with the same ``n`` (inner dims must match to batch).
    ``n`` is a dynamic axis (no padding needed; n=1 gives a zero diversity penalty). The radius
    constraint (project each shift onto the L2 ball of radius eps; GIGS code 0.5, paper 0.4) and z
    re-standardisation are the service optimiser's job, not the graph's.

Constants baked into a model (perceptual weight, diversity sigma/space) and the category names of
the one-hot input (``couturier.categories``, from the training data) are written to the ONNX
``metadata_props`` (keys ``couturier.*``) so the service and :func:`check_gradient_models` read them
from the file. :func:`check_gradient_models` compares each file against float64 torch autograd per
sample; its report goes into the evaluation report.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from couturier.services.common.models import GRADIENT_MODELS, INV_GRAD, PREF_GRAD, SHIFT_GRAD

from .grad_export import export_value_and_grad, per_sample_relative_error, value_and_grad
from .objectives import (
    DEFAULT_DIVERSITY_SIGMA,
    DEFAULT_DIVERSITY_SPACE,
    DEFAULT_PERCEPTUAL_WEIGHT,
    DEFAULT_REALISM_MARGIN,
    InversionObjective,
    PreferenceObjective,
    ShiftObjective,
    sample_realism_margin,
)
from .onnx_io import category_metadata, export_forward, make_session, onnx_signature, read_metadata, write_metadata

__all__ = [
    "IO",
    "check_gradient_models",
    "example_inputs",
    "export_gradient_models",
    "read_metadata",
]

#: (input names, output names) of every gradient model; the gradient is output 1.
IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    PREF_GRAD: (
        ("z", "category", "theta", "realism_weight"),
        ("value", "grad_z", "phi", "image", "realism"),
    ),
    INV_GRAD: (("z", "category", "target"), ("value", "grad_z", "image")),
    SHIFT_GRAD: (
        ("base_z", "shifts", "category", "theta", "weights"),
        ("value", "grad_shifts", "images", "pref", "diversity"),
    ),
}
_WRT = {PREF_GRAD: 0, INV_GRAD: 0, SHIFT_GRAD: 1}
#: Axes besides the batch axis 0 of every input (all of them have it: the models are served batched).
_DYNAMIC_AXES: dict[str, dict[str, dict[int, str]]] = {
    PREF_GRAD: {},
    INV_GRAD: {},
    SHIFT_GRAD: {"shifts": {0: "batch", 1: "shifts"}},
}


def _eval_frozen(m: nn.Module) -> nn.Module:
    return m.eval().requires_grad_(False)


def _infer_dims(
    generator: nn.Module, encoder: nn.Module, z_dim: int | None, n_categories: int | None
) -> dict[str, int]:
    cfg = getattr(generator, "cfg", None)
    z_dim = z_dim if z_dim is not None else getattr(cfg, "z_dim", None)
    n_categories = n_categories if n_categories is not None else getattr(cfg, "n_categories", None)
    if z_dim is None or n_categories is None:
        raise ValueError("pass z_dim and n_categories (the generator has no cfg with them)")
    p = next(generator.parameters())
    with torch.no_grad():
        img = generator(torch.zeros(2, z_dim, dtype=p.dtype), torch.eye(n_categories, dtype=p.dtype)[[0, 0]])
        k = encoder(img).shape[1]
    return {
        "z_dim": int(z_dim),
        "n_categories": int(n_categories),
        "image_size": int(img.shape[-1]),
        "channels": int(img.shape[1]),
        "k": int(k),
    }


def example_inputs(
    name: str,
    dims: Mapping[str, int],
    *,
    batch: int,
    n_users: int = 3,
    n_shifts: int = 3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    theta: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    generator: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Random named inputs for model ``name`` (z ~ N(0, 0.5^2) as in Kang's code, shifts of norm ~0.3).

    Each row's ``theta (B,K)`` is a random positive mixture of ``n_users`` user vectors (weights
    summing to about 1/2), as the service sends for a group; ``theta`` (U,K) replaces the random
    user vectors (its U wins over ``n_users``). ``target`` replaces the inversion targets (default:
    G of other latent codes, when ``generator`` is given, else uniform noise in [-1, 1]).
    """
    g = torch.Generator().manual_seed(seed)
    dz, c, k, s = dims["z_dim"], dims["n_categories"], dims["k"], dims["image_size"]
    z = torch.randn(batch, dz, generator=g) * 0.5
    cat = torch.eye(c)[torch.randint(0, c, (batch,), generator=g)]
    if theta is None:
        th = torch.randn(n_users, k, generator=g) / k**0.5
    else:
        th = theta.detach().to(torch.float32).cpu()
    u = th.shape[0]
    row_theta = (torch.rand(batch, u, generator=g) / u) @ th  # (B,K): one user vector per row
    if name == PREF_GRAD:
        out = {
            "z": z,
            "category": cat,
            "theta": row_theta,
            "realism_weight": torch.rand(batch, 1, generator=g) + 0.5,
        }
    elif name == INV_GRAD:
        if target is not None:
            if target.shape[0] < batch:
                raise ValueError(f"need at least {batch} target images, got {target.shape[0]}")
            tgt = target.detach().to(torch.float32).cpu()[:batch]
        elif generator is not None:
            z2 = torch.randn(batch, dz, generator=g) * 0.5
            p = next(generator.parameters())
            with torch.no_grad():
                tgt = generator(z2.to(p.dtype), cat.to(p.dtype)).float().clamp(-1, 1)
        else:
            tgt = torch.rand(batch, dims["channels"], s, s, generator=g) * 2 - 1
        out = {"z": z, "category": cat, "target": tgt}
    elif name == SHIFT_GRAD:
        shifts = torch.randn(batch, n_shifts, dz, generator=g)
        shifts = 0.3 * shifts / shifts.norm(dim=-1, keepdim=True)
        weights = torch.stack([torch.rand(batch, generator=g) + 0.5, torch.rand(batch, generator=g) + 0.5], 1)
        out = {"base_z": z, "shifts": shifts, "category": cat, "theta": row_theta, "weights": weights}
    else:
        raise ValueError(f"unknown gradient model {name!r}")
    return {kk: v.to(dtype) for kk, v in out.items()}


def _objective(name: str, nets: Mapping[str, nn.Module], meta: Mapping[str, str]) -> nn.Module:
    margin = float(meta.get("realism_margin", DEFAULT_REALISM_MARGIN))
    if name == PREF_GRAD:
        return PreferenceObjective(nets["generator"], nets["discriminator"], nets["encoder"], realism_margin=margin)
    if name == INV_GRAD:
        return InversionObjective(
            nets["generator"], nets["perceptual"], float(meta.get("perceptual_weight", DEFAULT_PERCEPTUAL_WEIGHT))
        )
    return ShiftObjective(
        nets["generator"],
        nets["discriminator"],
        nets["encoder"],
        sigma=float(meta.get("diversity_sigma", DEFAULT_DIVERSITY_SIGMA)),
        diversity_space=meta.get("diversity_space", DEFAULT_DIVERSITY_SPACE),
        realism_margin=margin,
    )


def export_gradient_models(
    generator: nn.Module,
    discriminator: nn.Module,
    encoder: nn.Module,
    perceptual: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    categories: Sequence[str],
    n_shifts_example: int = 3,
    perceptual_weight: float = DEFAULT_PERCEPTUAL_WEIGHT,
    diversity_sigma: float = DEFAULT_DIVERSITY_SIGMA,
    diversity_space: str = DEFAULT_DIVERSITY_SPACE,
    realism_margin: float | None = None,
    z_dim: int | None = None,
    n_categories: int | None = None,
    opset: int = 18,
    models: tuple[str, ...] = GRADIENT_MODELS,
) -> dict[str, Path]:
    """Write ``pref_grad.onnx``, ``inv_grad.onnx``, ``shift_grad.onnx`` into ``out_dir``; returns name -> path.

    ``categories``: the names of the generator's categories in one-hot order (the training data's),
    written into each model's metadata. Modules are put in eval mode and frozen (float32). Dynamic
    axes: ``batch`` on axis 0 of every input and output, ``shifts`` on axis 1 of shifts
    (``n_shifts_example`` >= 2 is only the tracing example). Raises
    :class:`~couturier.export.onnx_io.OnnxExportError` on failure.
    """
    if n_shifts_example < 2:
        raise ValueError("n_shifts_example must be >= 2 (size-1 example dims get specialised)")
    nets = {"generator": generator, "discriminator": discriminator, "encoder": encoder, "perceptual": perceptual}
    for m in nets.values():
        _eval_frozen(m)
    dims = _infer_dims(generator, encoder, z_dim, n_categories)
    if len(categories) != dims["n_categories"]:
        raise ValueError(
            f"{len(categories)} category names for a generator of {dims['n_categories']} categories: "
            "pass the names the generator was trained with (its checkpoint's category_names)"
        )
    if realism_margin is None:  # the median realism of the generator's own samples
        realism_margin = sample_realism_margin(generator, discriminator, dims["n_categories"], dims["z_dim"])
    meta_common = {
        **dims,
        **category_metadata(categories),
        "torch": torch.__version__,
        "realism_margin": realism_margin,
    }
    meta = {
        PREF_GRAD: {
            **meta_common,
            "objective": "theta.Phi(G(z)) - realism_weight*min(D(G(z))-realism_margin,0)^2",
            "direction": "maximise",
        },
        INV_GRAD: {
            **meta_common,
            "objective": "mse(G(z),target) + perceptual_weight*perceptual(G(z),target)",
            "direction": "minimise",
            "perceptual_weight": float(perceptual_weight),
        },
        SHIFT_GRAD: {
            **meta_common,
            "objective": "mean_i pref(base_z+shift_i) - diversity_weight*diversity",
            "direction": "maximise",
            "diversity_sigma": float(diversity_sigma),
            "diversity_space": diversity_space,
        },
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in models:
        str_meta = {k: str(v) for k, v in meta[name].items()}
        objective = _objective(name, nets, str_meta)
        ins, outs = IO[name]
        ex = example_inputs(name, dims, batch=2, n_users=3, n_shifts=n_shifts_example, seed=1, generator=generator)
        path = export_value_and_grad(
            objective,
            tuple(ex[k] for k in ins),
            out_dir / f"{name}.onnx",
            wrt=_WRT[name],
            input_names=ins,
            output_names=outs,
            dynamic_axes=_DYNAMIC_AXES[name],
            opset=opset,
        )
        write_metadata(path, meta[name])
        paths[name] = path
    return paths


def _time_ms(sess: Any, feeds: Mapping[str, np.ndarray], repeats: int) -> float:
    sess.run(None, dict(feeds))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, dict(feeds))
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def check_gradient_models(
    generator: nn.Module,
    discriminator: nn.Module,
    encoder: nn.Module,
    perceptual: nn.Module,
    paths: Mapping[str, str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    batch: int = 32,
    n_users: int = 4,
    n_shifts: int = 4,
    seed: int = 0,
    theta: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    z_dim: int | None = None,
    n_categories: int | None = None,
    measure_cost: bool = False,
    cost_batch: int = 8,
    cost_repeats: int = 20,
    threads: int | None = None,
) -> dict[str, Any]:
    """Compare each ONNX gradient model with float64 torch autograd per sample; returns a report dict.

    ``paths`` is the dict from :func:`export_gradient_models` or its ``out_dir``. Per model:
    ``grad_rel_err_median`` / ``grad_rel_err_p99`` / ``grad_rel_err_max`` (``||g_b - g64_b|| /
    ||g64_b||`` over samples), ``value_max_abs_err`` and ``value_rel_err`` (max abs error over the
    mean |value|), ``aux_max_abs_err`` per aux output, and with ``measure_cost`` the median
    onnxruntime latency at ``cost_batch`` of the gradient model vs a forward-only export of the same
    objective (exported to a temporary directory) and their ratio. Float32 samples near a ReLU kink
    can legitimately differ from the float64 reference, hence median / p99 rather than max.
    ``theta`` (real user vectors) and ``targets`` (real images for inversion) make the check use
    realistic inputs.
    """
    if not isinstance(paths, Mapping):
        paths = {name: Path(paths) / f"{name}.onnx" for name in GRADIENT_MODELS}
    nets = {"generator": generator, "discriminator": discriminator, "encoder": encoder, "perceptual": perceptual}
    for m in nets.values():
        _eval_frozen(m)
    nets64 = {k: _eval_frozen(copy.deepcopy(v).double()) for k, v in nets.items()}
    dims = _infer_dims(generator, encoder, z_dim, n_categories)
    report: dict[str, Any] = {
        "batch": batch,
        "n_users": n_users if theta is None else int(theta.shape[0]),
        "n_shifts": n_shifts,
        "seed": seed,
        "torch": torch.__version__,
        "models": {},
    }
    for name, path in paths.items():
        path = Path(path)
        meta = read_metadata(path)
        sig = onnx_signature(path)
        ins, outs = IO[name]
        ex = example_inputs(
            name,
            dims,
            batch=batch,
            n_users=n_users,
            n_shifts=n_shifts,
            seed=seed,
            theta=theta,
            target=targets,
            generator=generator,
        )
        sess = make_session(path, threads=threads)
        got = dict(zip(outs, sess.run(list(outs), {k: ex[k].numpy() for k in ins}), strict=True))
        ref64 = value_and_grad(_objective(name, nets64, meta), _WRT[name])(*(ex[k].double() for k in ins))
        ref = dict(zip(outs, (r.numpy() for r in ref64), strict=True))
        rel = per_sample_relative_error(got[outs[1]], ref[outs[1]])
        # float32 torch autograd vs the same float64 reference: the conditioning floor of the models
        ref32 = value_and_grad(_objective(name, nets, meta), _WRT[name])(*(ex[k] for k in ins))
        rel32 = per_sample_relative_error(ref32[1], ref[outs[1]])
        v_abs = float(np.abs(got["value"] - ref["value"]).max())
        entry: dict[str, Any] = {
            "path": str(path),
            "opset": sig.opset,
            "inputs": {t.name: list(t.shape) for t in sig.inputs},
            "outputs": {t.name: list(t.shape) for t in sig.outputs},
            "metadata": meta,
            "grad_rel_err_median": float(np.median(rel)),
            "grad_rel_err_p90": float(np.quantile(rel, 0.90)),
            "grad_rel_err_p99": float(np.quantile(rel, 0.99)),
            "grad_rel_err_max": float(rel.max()),
            "torch_float32_grad_rel_err_median": float(np.median(rel32)),
            "torch_float32_grad_rel_err_p90": float(np.quantile(rel32, 0.90)),
            "torch_float32_grad_rel_err_p99": float(np.quantile(rel32, 0.99)),
            "value_max_abs_err": v_abs,
            "value_rel_err": v_abs / max(float(np.abs(ref["value"]).mean()), 1e-30),
            "aux_max_abs_err": {o: float(np.abs(got[o] - ref[o]).max()) for o in outs[2:]},
        }
        if measure_cost:
            cx = example_inputs(
                name,
                dims,
                batch=cost_batch,
                n_users=n_users,
                n_shifts=n_shifts,
                seed=seed + 1,
                theta=theta,
                target=targets,
                generator=generator,
            )
            feeds = {k: cx[k].numpy() for k in ins}
            with tempfile.TemporaryDirectory() as tmp:
                fwd_path = Path(tmp) / f"{name}_forward.onnx"
                exs = example_inputs(name, dims, batch=2, n_users=3, n_shifts=3, seed=1, generator=generator)
                export_forward(
                    _objective(name, nets, meta),
                    tuple(exs[k] for k in ins),
                    fwd_path,
                    input_names=ins,
                    output_names=(outs[0], *outs[2:]),
                    dynamic_axes=_DYNAMIC_AXES[name],
                )
                fwd_ms = _time_ms(make_session(fwd_path, threads=threads), feeds, cost_repeats)
            grad_ms = _time_ms(sess, feeds, cost_repeats)
            entry.update(
                {
                    "cost_batch": cost_batch,
                    "grad_ms": grad_ms,
                    "forward_ms": fwd_ms,
                    "grad_over_forward": grad_ms / fwd_ms,
                }
            )
        report["models"][name] = entry
    return report
