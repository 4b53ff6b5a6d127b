"""The latent optimisers on the loop models: K Adam steps per model call instead of one.

Same objectives, starts and Adam as the numpy reference (:mod:`couturier.services.latent.optimize`,
which stays the reference implementation), run by the loop models ``inv_loop``, ``pref_loop`` and
``shift_loop`` (an ONNX ``Loop`` around the gradient model; signature in
:mod:`couturier.export.loop_models`). The optimiser state (``w``/``shifts``, Adam's moments, the
gradient at the current point, the step count) travels with every call in float64, so a run of N
steps is ceil(N / K) calls of K steps (the first also evaluates the start point) doing the N + 1
evaluations of the reference, and returns what the reference returns (float32 rounding aside): the
same result types, with the history of every step from the models' ``*_history`` outputs.

Progress (``on_step``) is reported at the end of each call only: at step 0 (a streamed run
evaluates its start point in a call of its own, so step 0 is shown at once), then every K steps and
at the last step. With ``report_every`` (R), calls are also cut at the multiples of ``max(R, K)``,
so a caller that reports at those multiples sees the same steps as the reference with that R.

What couples the rows of one request stays here: the best restart of an inversion (the models keep
each row's best point; the best over rows is picked here), the group's per-user scores (from
``phi``). The TOP_K_SHARE design objective, whose user weights change every step, is not run here:
it stays on the reference optimiser (one ``pref_grad`` call per step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from couturier.services.common.inference import InferenceBackend
from couturier.services.common.loop_specs import LOOP_SPECS, LoopSpec
from couturier.services.common.models import INV_LOOP, PREF_GRAD, PREF_LOOP, SHIFT_LOOP
from couturier.services.latent import optimize
from couturier.services.latent.optimize import (
    InversionResult,
    OnStep,
    PreferenceResult,
    ShiftResult,
)

__all__ = ["DEFAULT_LOOP_STEPS", "LoopCall", "call_sizes", "invert", "maximise_preference", "seller_shifts"]

#: Steps per loop-model call (``LatentSettings.loop_steps``). Measured on the quality models (README,
#: "Latent optimisation"): 10 runs Design's default 10 steps in one call and reports Alter's progress
#: every 10 steps; 25 saved ~0.2 s of Alter's 1.3 s through Triton but reports 2.5x more coarsely, and
#: merged requests with different K wait for the largest.
DEFAULT_LOOP_STEPS = 10


def call_sizes(steps: int, loop_steps: int, report_every: int = 0) -> list[int]:
    """Steps of each loop-model call for a run of ``steps``: ``loop_steps`` each, cut at the multiples
    of ``max(report_every, loop_steps)`` when ``report_every`` > 0 (so those steps end a call)."""
    if loop_steps < 1 or steps < 0 or report_every < 0:
        raise ValueError(
            f"need loop_steps >= 1, steps >= 0, report_every >= 0; got {loop_steps}, {steps}, {report_every}"
        )
    every = max(report_every, loop_steps) if report_every else 0
    sizes, t = [], 0
    while t < steps:
        end = min(t + loop_steps, steps)
        if every:
            end = min(end, (t // every + 1) * every)
        sizes.append(end - t)
        t = end
    return sizes


@dataclass
class LoopCall:
    """The optimiser state of a run on a loop model, and the calls that advance it."""

    backend: InferenceBackend
    model: str
    version: str
    param: np.ndarray  # float64 (B,*P)
    learning_rate: float
    fixed: Mapping[str, np.ndarray]  # the gradient model's other inputs, per row
    radius: float = 0.0
    step: int = 0
    calls: int = 0

    def __post_init__(self) -> None:
        self.spec: LoopSpec = LOOP_SPECS[self.model]
        self.m = np.zeros_like(self.param)
        self.v = np.zeros_like(self.param)
        self.grad = np.zeros(self.param.shape, np.float32)

    async def run(self, steps: int, *, evaluate_first: bool = False) -> dict[str, np.ndarray]:
        """``steps`` steps in one call, evaluating the current point first with ``evaluate_first`` (a
        run's first call; with 0 steps: only that); returns the model's outputs."""
        rows = self.param.shape[0]
        param, m, v, grad = self.spec.state_inputs
        inputs = {
            param: np.ascontiguousarray(self.param, np.float64),
            m: self.m,
            v: self.v,
            grad: self.grad,
            "step": np.full((rows, 1), self.step, np.int64),
            "steps": np.full((rows, 1), steps, np.int64),
            "evaluate_first": np.full((rows, 1), evaluate_first, np.bool_),
            "learning_rate": np.full((rows, 1), self.learning_rate, np.float64),
            **self.fixed,
        }
        if self.spec.constraint == "ball":
            inputs["radius"] = np.full((rows, 1), self.radius, np.float64)
        out = await self.backend.infer(self.model, inputs, version=self.version)
        self.calls += 1
        self.param, self.m, self.v, self.grad = (out[name] for name in self.spec.state_outputs)
        self.step += steps
        return out


def _history(out: Mapping[str, np.ndarray], name: str, points: int) -> np.ndarray:
    """``(points, B, ...)``: the output ``name`` at each point a call evaluated, in order."""
    return np.moveaxis(np.asarray(out[f"{name}_history"])[:, :points], 1, 0)


def _plan(steps: int, loop_steps: int, report_every: int, stream: bool) -> list[tuple[int, bool]]:
    """(steps, evaluate_first) of each call of a run. A streamed run evaluates its start point alone
    first (step 0 is reported at once); otherwise the first call evaluates it before its steps."""
    sizes = call_sizes(steps, loop_steps, report_every)
    if stream or not sizes:
        return [(0, True)] + [(size, False) for size in sizes]
    return [(sizes[0], True)] + [(size, False) for size in sizes[1:]]


# -- inversion -----------------------------------------------------------------------------------


async def invert(
    backend: InferenceBackend,
    *,
    target: np.ndarray,
    category: np.ndarray,
    steps: int = optimize.DEFAULT_INVERSION_STEPS,
    learning_rate: float = optimize.DEFAULT_INVERSION_LEARNING_RATE,
    restarts: int = optimize.DEFAULT_RESTARTS,
    seed: int | None = 0,
    z_dim: int | None = None,
    versions: Mapping[str, str] = {},
    on_step: OnStep | None = None,
    loop_steps: int = DEFAULT_LOOP_STEPS,
    report_every: int = 0,
) -> InversionResult:
    """:func:`optimize.invert` on ``inv_loop``: the same starts, steps and best point (over restarts
    and steps; ties go to the earliest step, then the first restart). Calls: ceil(steps / K), one
    more with ``on_step`` (and more when ``report_every`` cuts them)."""
    target, category = np.asarray(target), np.asarray(category)
    if target.ndim != 4 or target.shape[0] != 1:
        raise ValueError(f"target must be (1, 3, S, S), got shape {target.shape}")
    if category.ndim != 2 or category.shape[0] != 1:
        raise ValueError(f"category must be (1, C), got shape {category.shape}")
    if restarts < 1 or steps < 0:
        raise ValueError(f"need restarts >= 1 and steps >= 0, got {restarts} and {steps}")
    version = versions.get(INV_LOOP, "")
    if z_dim is None:
        z_dim = int((await backend.input_shapes(INV_LOOP, version))["w"][-1])
    fixed = {
        "category": np.ascontiguousarray(np.repeat(category, restarts, axis=0), np.float32),
        "target": np.ascontiguousarray(np.repeat(target, restarts, axis=0), np.float32),
    }
    w = optimize._to_w(optimize.sample_prior(restarts, z_dim, seed))
    run = LoopCall(backend, INV_LOOP, version, w, learning_rate, fixed)
    history: list[np.ndarray] = []
    best_value = np.full(restarts, np.inf)
    best_step = np.zeros(restarts, np.int64)
    best_z = np.zeros((restarts, z_dim), np.float32)
    best_image: np.ndarray | None = None
    for size, first in _plan(steps, loop_steps, report_every, on_step is not None):
        out = await run.run(size, evaluate_first=first)
        history.extend(_history(out, "value", size + first).astype(np.float64))
        better = out["best_value"].astype(np.float64) < best_value  # strict: the earlier point wins a tie
        best_value = np.where(better, out["best_value"], best_value)
        best_step = np.where(better, out["best_step"], best_step)
        best_z[better] = out["best_z"][better]
        best_image = out["best_image"].copy() if best_image is None else best_image
        best_image[better] = out["best_image"][better]
        if on_step is not None:
            await on_step(run.step, out["z"], out["value"].astype(np.float32), out["image"])
    assert best_image is not None
    r = int(np.lexsort((np.arange(restarts), best_step, best_value))[0])
    return InversionResult(
        z=best_z[r : r + 1],
        image=best_image[r : r + 1],
        loss=float(best_value[r]),
        best_restart=r,
        best_step=int(best_step[r]),
        history=np.stack(history),
        calls=run.calls,
    )


# -- preference maximisation (MEAN) --------------------------------------------------------------


async def maximise_preference(
    backend: InferenceBackend,
    *,
    z0: np.ndarray,
    category: np.ndarray,
    theta: np.ndarray,
    steps: int = optimize.DEFAULT_STEPS,
    learning_rate: float = optimize.DEFAULT_LEARNING_RATE,
    realism_weight: float = optimize.DEFAULT_REALISM_WEIGHT,
    versions: Mapping[str, str] = {},
    on_step: OnStep | None = None,
    loop_steps: int = DEFAULT_LOOP_STEPS,
    report_every: int = 0,
) -> PreferenceResult:
    """:func:`optimize.maximise_preference` with the MEAN objective on ``pref_loop`` (every row sends
    the group's mean user vector; per-user scores from ``phi``). Calls: ceil(steps / K) (at least
    1), one more with ``on_step``."""
    z0, category, theta = np.asarray(z0), np.asarray(category), np.asarray(theta)
    if z0.ndim != 2 or category.ndim != 2 or category.shape[0] != z0.shape[0]:
        raise ValueError(f"z0 must be (B, Dz) and category (B, C); got shapes {z0.shape} and {category.shape}")
    if theta.ndim != 2 or theta.shape[0] < 1 or steps < 0:
        raise ValueError(f"theta must be (U, K) with U >= 1 and steps >= 0; got shape {theta.shape}, {steps}")
    rows, n_users = z0.shape[0], theta.shape[0]
    sent = optimize.row_theta(np.full((rows, n_users), 1.0 / n_users), theta)  # the group's mean vector
    fixed = {
        "category": np.ascontiguousarray(category, np.float32),
        "theta": sent,
        "realism_weight": np.full((rows, 1), realism_weight, np.float32),
    }
    w = optimize._to_w(z0)
    run = LoopCall(backend, PREF_LOOP, versions.get(PREF_LOOP, ""), w, learning_rate, fixed)
    history: list[np.ndarray] = []
    values: list[np.ndarray] = []

    def record(value: np.ndarray, phi: np.ndarray) -> np.ndarray:
        scores = optimize.user_scores(phi, theta)
        objective = scores.mean(axis=1)
        history.append(objective)
        values.append(objective - optimize.realism_term(value, phi, sent))
        return scores

    scores_before = scores = np.zeros((rows, n_users))
    for size, first in _plan(steps, loop_steps, report_every, on_step is not None):
        out = await run.run(size, evaluate_first=first)
        points = size + first
        for value, phi in zip(_history(out, "value", points), _history(out, "phi", points), strict=True):
            scores = record(value, phi)
            if len(history) == 1:
                scores_before = scores
        if on_step is not None:
            await on_step(run.step, out["z"], history[-1].astype(np.float32), out["image"])
    smooth = np.stack(history)
    return PreferenceResult(
        z=out["z"],
        image=out["image"],
        scores_before=scores_before.astype(np.float32),
        scores_after=scores.astype(np.float32),
        objective_before=history[0],
        objective_after=history[-1],
        realism=out["realism"].reshape(-1),
        history=smooth,
        smooth_history=smooth,
        value_history=np.stack(values),
        calls=run.calls,
    )


# -- GIGS seller shifts --------------------------------------------------------------------------


async def seller_shifts(
    backend: InferenceBackend,
    *,
    base_z: np.ndarray,
    category: np.ndarray,
    theta: np.ndarray,
    user_weight: np.ndarray,
    n: int = optimize.DEFAULT_SHIFTS,
    radius: float = optimize.DEFAULT_SHIFT_RADIUS,
    diversity_weight: float = optimize.DEFAULT_DIVERSITY_WEIGHT,
    realism_weight: float = optimize.DEFAULT_REALISM_WEIGHT,
    steps: int = optimize.DEFAULT_SHIFT_STEPS,
    learning_rate: float | None = None,
    seed: int | None = 0,
    versions: Mapping[str, str] = {},
    loop_steps: int = DEFAULT_LOOP_STEPS,
) -> ShiftResult:
    """:func:`optimize.seller_shifts` on ``shift_loop`` (one row: the request's n shifts), then, as
    the reference, one ``pref_grad`` evaluation of the base and the variants. The history is the
    objective at the start of each step, as the reference's (the loop also evaluates the final
    shifts, which the reference does not). Calls: ceil(steps / K) + 1."""
    base = np.clip(np.asarray(base_z, dtype=np.float64), *optimize.LATENT_BOX)
    category, theta, user_weight = np.asarray(category), np.asarray(theta), np.asarray(user_weight)
    if base.ndim != 1 or category.ndim != 1 or theta.ndim != 2 or user_weight.shape != (theta.shape[0],):
        raise ValueError(
            f"need base_z (Dz,), category (C,), theta (U, K), user_weight (U,); got shapes {base.shape}, "
            f"{category.shape}, {theta.shape}, {user_weight.shape}"
        )
    if not (1 <= n <= base.size and radius > 0 and steps >= 0):
        raise ValueError(f"need 1 <= n <= Dz={base.size}, radius > 0, steps >= 0; got {n}, {radius}, {steps}")
    directions = np.linalg.qr(np.random.default_rng(seed).standard_normal((base.size, n)))[0].T  # (n,Dz) orthonormal
    shifts = optimize._project(base, 0.5 * radius * directions, radius)
    group_theta = optimize.row_theta(user_weight[None], theta)  # (1,K): the audience as one user vector
    fixed = {
        "base_z": base[None].astype(np.float32),
        "category": category[None].astype(np.float32),
        "theta": group_theta,
        "weights": np.array([[diversity_weight, realism_weight]], dtype=np.float32),
    }
    rate = optimize.default_shift_learning_rate(radius) if learning_rate is None else learning_rate
    run = LoopCall(backend, SHIFT_LOOP, versions.get(SHIFT_LOOP, ""), shifts[None], rate, fixed, radius=radius)
    history: list[float] = []
    if steps:
        for size, first in _plan(steps, loop_steps, 0, stream=False):
            out = await run.run(size, evaluate_first=first)
            history.extend(_history(out, "value", size + first)[:, 0].tolist())
        shifts = run.param[0]
    both = np.concatenate([base[None], base[None] + shifts])
    evaluated = await optimize._pref(  # as the reference: exact latents (shifts may end on the box's faces)
        backend,
        versions.get(PREF_GRAD, ""),
        both,
        np.repeat(category[None], n + 1, axis=0),
        np.repeat(group_theta, n + 1, axis=0),
        0.0,
    )
    return optimize.shift_result(base, shifts, evaluated, np.array(history[:steps]), calls=run.calls + 1)
