"""Latent optimisers of the latent service: numpy Adam over gradients served by the model backend.

Every forward pass and gradient comes from the ONNX gradient models (``pref_grad``, ``inv_grad``,
``shift_grad``; their signatures are written by the exporter) through an
:class:`~couturier.services.common.inference.InferenceBackend`; only the optimiser state lives here
(numpy, float64; float32 goes over the wire). Images are float32 NCHW in [-1, 1].

Every model input is per row (the batch on axis 0, rows independent), so the model server can merge
concurrent requests into one execution. The per-user arithmetic is done here: a row carries one
user vector ``theta_b = sum_u w_bu theta_u`` (the preference is linear in theta), and the per-user
scores are ``phi @ theta_u.T`` from the model's ``phi = Phi(G(z))`` output (U x K, numpy).

Latent constraint
-----------------
The generator was trained on ``z ~ U[-1, 1]^Dz``. Preference maximisation and inversion optimise an
unconstrained ``w`` and use ``z = tanh(w)`` (the tanh box of Kang et al.'s paper text), so every
iterate lies strictly inside the training range: ``grad_w = grad_z * (1 - z^2)`` and
``w0 = arctanh(clip(z0, -0.999, 0.999))``. Alternatives not taken: clipping ``z`` after each step
(projected gradient; coordinates pinned at a face keep their Adam momentum pushing outwards, and
the result is not smooth in the start point); GIGS's re-standardisation of ``z`` to zero mean / unit
variance each step (it presumes a Gaussian prior: it would move uniform latents out of the box);
Kang's code, which leaves ``z`` free (designs can drift off the training range and degrade).
Seller shifts are the exception: their radius is an L2 ball in ``z`` space, so they use Adam on
the shifts plus a projection onto box and ball (both convex; see :func:`seller_shifts`).

Backend calls are sequential (each step needs the previous one); every call of one function uses
the model versions in ``versions`` (model name -> version, "" = the served one), so a caller that
pins them gets one consistent model per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from couturier.services.common.inference import InferenceBackend
from couturier.services.common.models import INV_GRAD, PREF_GRAD, SHIFT_GRAD
from couturier.services.latent.ssim import ssim

__all__ = [
    "DEFAULT_DIVERSITY_WEIGHT",
    "DEFAULT_INVERSION_LEARNING_RATE",
    "DEFAULT_INVERSION_STEPS",
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_REALISM_WEIGHT",
    "DEFAULT_RESTARTS",
    "DEFAULT_SHIFTS",
    "DEFAULT_SHIFT_RADIUS",
    "DEFAULT_SHIFT_STEPS",
    "DEFAULT_START_CANDIDATES",
    "DEFAULT_STEPS",
    "LATENT_BOX",
    "SHIFT_LEARNING_RATE_PER_RADIUS",
    "START_SCORING_ROWS",
    "TOPK_TEMPERATURE_FACTOR",
    "Adam",
    "InversionResult",
    "Objective",
    "OnStep",
    "PreferenceResult",
    "ShiftResult",
    "default_shift_learning_rate",
    "invert",
    "maximise_preference",
    "one_hot",
    "realism_term",
    "row_theta",
    "sample_prior",
    "select_starts",
    "seller_shifts",
    "shift_result",
    "user_scores",
]

# -- defaults (the service and the proto documentation use these) ------------------------------

#: Preference maximisation: Adam steps / learning rate on w (z = tanh(w)) / realism weight. Kang's
#: code uses 10 steps at lr 0.05 with realism 1.0; 10 steps move each coordinate of w by at most
#: ~0.5, which visibly changes a design within a fraction of a second of model time.
DEFAULT_STEPS = 10
DEFAULT_LEARNING_RATE = 0.05
DEFAULT_REALISM_WEIGHT = 1.0
#: Design start selection: a design starts from the best of ``DEFAULT_START_CANDIDATES`` prior samples
#: (by the objective it is optimised for, scored in one pref_grad call per ``START_SCORING_ROWS``
#: rows that asks for the ``value`` output only, so onnxruntime skips the backward pass: about half
#: the cost of a full call, measured on one thread). Measured on the quality models, 50 SIMULATED
#: shoppers, n = 4 designs of 10 steps: the share of shoppers whose best design lands in their
#: planted-taste top 10% of the category went from 0.40 (1 candidate) to 0.58 (8) and 0.62 (16), with
#: 32 and 64 no better (0.56); the same share for the catalogue's own best item by learned score is
#: 0.62, the scorer's ceiling. 20 steps from 1 candidate gave 0.48 at twice the optimisation cost.
DEFAULT_START_CANDIDATES = 16
START_SCORING_ROWS = 64
#: The realism term, ``realism_weight * min(D(G(z)) - margin, 0)^2``, lives in the gradient model: the
#: margin is the median realism of the generator's own samples, measured when the model is exported
#: (ONNX metadata ``couturier.realism_margin``), so a design pays only for becoming less realistic
#: than a typical sample. The service reads the term back from the model's outputs
#: (:func:`realism_term`), never a constant of its own.
#: GAN inversion: Adam steps / learning rate / random restarts. GIGS's code runs 1000 steps; on the
#: demo models 200 steps of 4 batched restarts give ~97% of the 1000-step loss reduction (~0.6 s CPU).
DEFAULT_INVERSION_STEPS = 200
DEFAULT_INVERSION_LEARNING_RATE = 0.05
DEFAULT_RESTARTS = 4
#: GIGS seller shifts: variants, L2 radius in z space, diversity weight, Adam steps. GIGS's code
#: uses radius 0.5 in StyleGAN's latent; in this generator's 100-d box a shift of 0.5 changes the
#: image by ~0.2% (1 - SSIM between variants 0.002, measured on the quality models), so variants
#: were indistinguishable. Measured on 18 (group, product) pairs of the quality models (SIMULATED
#: shoppers), with the diversity term on 8x8-pooled pixels (sigma 0.01, see export/objectives.py):
#: radius 4, 40 steps, diversity weight 1 gave a positive mean shift for 100% of pairs, least
#: distinct pair of variants 1 - SSIM 0.075 (median 0.23), 90% of variants judged in their
#: category; radius 0.5 (20 steps): 67% of pairs, 0.000 (0.002).
DEFAULT_SHIFTS = 6
DEFAULT_SHIFT_RADIUS = 4.0
DEFAULT_DIVERSITY_WEIGHT = 1.0
DEFAULT_SHIFT_STEPS = 40
#: Adam moves every coordinate by about lr per step, so a step has L2 norm ~ lr * sqrt(Dz): at 0.05
#: (Kang's design rate) one step of a 100-d shift spans a radius of 0.5 and every shift collapses
#: onto the one best direction. The rate scales with the radius (0.024 at the default 4), so a
#: shift crosses the same share of its ball per step whatever the radius.
SHIFT_LEARNING_RATE_PER_RADIUS = 0.006


def default_shift_learning_rate(radius: float) -> float:
    """Adam's rate on the shifts for an L2 ball of ``radius``: proportional to it."""
    return SHIFT_LEARNING_RATE_PER_RADIUS * radius


#: The generator's latent range (training prior U[-1, 1]).
LATENT_BOX = (-1.0, 1.0)
#: TOP_K_SHARE temperature T_b = factor * RMS_u(s_bu(z0) - tau_u) (see :func:`maximise_preference`).
TOPK_TEMPERATURE_FACTOR = 0.5

_TANH_CLIP = 0.999

Objective = Literal["mean", "top_k_share"]
#: ``await on_step(step, z (B,Dz), objective (B,), image (B,3,S,S))``; step 0 is the start point.
OnStep = Callable[[int, np.ndarray, np.ndarray, np.ndarray], Awaitable[None]]


class Adam:
    """Adam (Kingma & Ba 2015) on one numpy array; ``maximise=True`` ascends the gradient.

    Defaults: ``learning_rate`` 0.05 (Kang's code), ``beta1`` 0.9, ``beta2`` 0.999, ``eps`` 1e-8.
    State (moments, step count) is float64 and shaped like the first gradient it sees.
    """

    def __init__(
        self,
        learning_rate: float = DEFAULT_LEARNING_RATE,
        *,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        maximise: bool = False,
    ) -> None:
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        self.learning_rate, self.beta1, self.beta2, self.eps = learning_rate, beta1, beta2, eps
        self.maximise = maximise
        self.t = 0
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Return the updated parameters (``params`` is not modified)."""
        grad = np.asarray(grad, dtype=np.float64)
        if np.shape(params) != grad.shape:
            raise ValueError(f"gradient shape {grad.shape} does not match parameters {np.shape(params)}")
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros_like(grad), np.zeros_like(grad)
        elif self.m.shape != grad.shape:
            raise ValueError(f"gradient shape {grad.shape} changed from {self.m.shape}")
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad * grad
        m_hat = self.m / (1 - self.beta1**self.t)
        v_hat = self.v / (1 - self.beta2**self.t)
        update = self.learning_rate * m_hat / (np.sqrt(v_hat) + self.eps)
        return np.asarray(params, dtype=np.float64) + (update if self.maximise else -update)


# -- helpers -------------------------------------------------------------------------------------


def sample_prior(batch: int, z_dim: int, seed: int | None) -> np.ndarray:
    """``(batch, z_dim)`` float32 latents from the generator's prior U[-1, 1]."""
    return np.random.default_rng(seed).uniform(*LATENT_BOX, (batch, z_dim)).astype(np.float32)


def one_hot(index: int, n_categories: int, batch: int = 1) -> np.ndarray:
    """``(batch, n_categories)`` float32 one-hot rows of category ``index`` (order: the models' category list)."""
    if not 0 <= index < n_categories:
        raise ValueError(f"category index {index} is outside 0..{n_categories - 1}")
    return np.repeat(np.eye(n_categories, dtype=np.float32)[index][None], batch, axis=0)


def _f32(x: np.ndarray | float) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _to_w(z: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(np.asarray(z, dtype=np.float64), -_TANH_CLIP, _TANH_CLIP))


def _tanh_adam_step(adam: Adam, w: np.ndarray, grad_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Adam step on ``w`` where ``z = tanh(w)``, from the gradient ``grad_z`` at ``z``.

    Chain rule: ``grad_w = grad_z * (1 - z^2)``; ascends or descends as ``adam`` was built
    (``maximise``). Serves preference maximisation and inversion alike. Returns the new ``(w, z)``,
    ``z`` strictly inside the box (-1, 1).
    """
    z = np.tanh(w)
    w = adam.step(w, np.asarray(grad_z, dtype=np.float64) * (1.0 - z * z))
    return w, np.tanh(w)


def realism_term(value: np.ndarray, phi: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``realism_weight * penalty`` per sample from a ``pref_grad`` call with row vectors ``theta (B,K)``:
    ``theta_b . phi_b - value_b``."""
    weighted = (np.asarray(theta, np.float64) * np.asarray(phi, np.float64)).sum(axis=1)
    term: np.ndarray = weighted - np.asarray(value, np.float64).reshape(-1)
    return term


def user_scores(phi: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``(B,U)`` per-user scores ``theta_u . phi_b`` (float64) from ``pref_grad``'s ``phi (B,K)`` output."""
    scores: np.ndarray = np.asarray(phi, np.float64) @ np.asarray(theta, np.float64).T
    return scores


def row_theta(user_weight: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``(B,K)`` float32 user vector of each row, ``sum_u user_weight[b,u] theta_u``: what the gradient
    models take for weights ``(B,U)`` over users ``theta (U,K)`` (the preference is linear in theta)."""
    return _f32(np.asarray(user_weight, np.float64) @ np.asarray(theta, np.float64))


async def _pref(
    backend: InferenceBackend,
    version: str,
    z: np.ndarray,
    category: np.ndarray,
    theta: np.ndarray,
    realism_weight: float,
    outputs: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """One ``pref_grad`` call; ``theta (B,K)`` is one user vector per row; ``outputs``: those only (the
    model server then runs only the part of the graph they need)."""
    inputs = {
        "z": _f32(z),
        "category": _f32(category),
        "theta": _f32(theta),
        "realism_weight": np.full((z.shape[0], 1), realism_weight, dtype=np.float32),
    }
    return await backend.infer(PREF_GRAD, inputs, outputs, version=version)


# -- preference maximisation ---------------------------------------------------------------------


async def select_starts(
    backend: InferenceBackend,
    *,
    candidates: np.ndarray,
    category: np.ndarray,
    theta: np.ndarray,
    n: int,
    realism_weight: float = DEFAULT_REALISM_WEIGHT,
    versions: Mapping[str, str] = {},
) -> np.ndarray:
    """The ``n`` rows of ``candidates (M,Dz)`` with the highest starting value, best first.

    The value is the group's mean preference minus the realism term, each candidate scored once by
    ``pref_grad`` (``ceil(M / START_SCORING_ROWS)`` calls, ``value`` output only); ties keep the sampling order.
    ``category`` is one one-hot row ``(1,C)`` or one per candidate ``(M,C)``; ``theta (U,K)``.
    """
    candidates, category, theta = np.asarray(candidates), np.asarray(category), np.asarray(theta)
    _require(candidates.ndim == 2, f"candidates must be (M, Dz), got shape {candidates.shape}")
    _require(1 <= n <= len(candidates), f"n must be between 1 and the {len(candidates)} candidates, got {n}")
    _require(theta.ndim == 2 and theta.shape[0] >= 1, f"theta must be (U, K) with U >= 1, got shape {theta.shape}")
    if category.ndim == 2 and category.shape[0] == 1:
        category = np.repeat(category, len(candidates), axis=0)
    _require(
        category.shape[:1] == candidates.shape[:1],
        f"category must be (1, C) or (M={len(candidates)}, C), got shape {category.shape}",
    )
    mean_theta = theta.astype(np.float64).mean(axis=0, keepdims=True)
    version = versions.get(PREF_GRAD, "")
    values = []
    for start in range(0, len(candidates), START_SCORING_ROWS):
        rows = slice(start, start + START_SCORING_ROWS)
        sent = _f32(np.repeat(mean_theta, len(candidates[rows]), axis=0))
        out = await _pref(backend, version, candidates[rows], category[rows], sent, realism_weight, ["value"])
        values.append(np.asarray(out["value"], np.float64).reshape(-1))  # mean preference - realism term
    order = np.argsort(-np.concatenate(values), kind="stable")
    return np.ascontiguousarray(candidates[order[:n]])


@dataclass(frozen=True)
class PreferenceResult:
    """Designs after optimisation. ``B`` designs, ``U`` users, ``T = steps + 1`` evaluated points.

    ``objective_*`` is the group objective reported to callers: the mean score over users (MEAN)
    or the hard share of users with ``s_u >= tau_u`` (TOP_K_SHARE). ``smooth_history`` is the
    differentiable group objective (MEAN: the mean score; TOP_K_SHARE: ``mean_u sigmoid``);
    ``value_history`` the full ascended value (preference term in score units minus the realism term).
    """

    z: np.ndarray  # (B,Dz) final latents, inside (-1, 1)
    image: np.ndarray  # (B,3,S,S)
    scores_before: np.ndarray  # (B,U) theta_u . Phi(G(z0))
    scores_after: np.ndarray  # (B,U)
    objective_before: np.ndarray  # (B,)
    objective_after: np.ndarray  # (B,)
    realism: np.ndarray  # (B,) D(G(z)) after
    history: np.ndarray  # (T,B) objective at each evaluated point (row 0 = start)
    smooth_history: np.ndarray  # (T,B)
    value_history: np.ndarray  # (T,B) what Adam ascends: preference term - the model's realism term
    temperature: np.ndarray | None = None  # (B,) TOP_K_SHARE only
    calls: int = 0  # pref_grad calls made


def _topk_terms(scores: np.ndarray, tau: np.ndarray, temp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hard share (B,), smooth share (B,), user_weight (B,U)) for TOP_K_SHARE at ``scores``."""
    sig = 0.5 * (1.0 + np.tanh(0.5 * (scores - tau[None]) / temp[:, None]))  # sigmoid without overflow
    n_users = scores.shape[1]
    hard = (scores >= tau[None]).mean(axis=1)
    # d(4T * mean_u sigmoid)/ds_u = 4 sig (1 - sig) / U: a user at the threshold weighs 1/U as in MEAN
    weight = 4.0 * sig * (1.0 - sig) / n_users
    return hard, sig.mean(axis=1), weight


async def maximise_preference(
    backend: InferenceBackend,
    *,
    z0: np.ndarray,
    category: np.ndarray,
    theta: np.ndarray,
    objective: Objective = "mean",
    thresholds: np.ndarray | None = None,
    steps: int = DEFAULT_STEPS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    realism_weight: float = DEFAULT_REALISM_WEIGHT,
    versions: Mapping[str, str] = {},
    on_step: OnStep | None = None,
) -> PreferenceResult:
    """Gradient ascent on ``z = tanh(w)`` of a group objective minus the model's realism term.

    Shapes: ``z0 (B,Dz)``, ``category (B,C)`` one-hot, ``theta (U,K)``, ``thresholds (U,)``.

    * ``"mean"``: maximise ``mean_u theta_u . Phi(G(z))``: every call sends the group's mean theta
      as each row's user vector (theta enters linearly, so this is the same objective and gradient
      at a cost independent of the group); the per-user scores come from the ``phi`` output.
      Calls: ``steps + 1``.
    * ``"top_k_share"``: the reported objective is the share of users with ``s_u >= tau_u``
      (``tau_u`` = the user's k-th best catalogue score, given as ``thresholds``). Optimised: the
      smooth share ``F = mean_u sigmoid((s_u - tau_u) / T_b)`` by the chain rule, the row's user
      vector ``sum_u dF/ds_u theta_u`` with ``dF/ds_u`` evaluated at the scores of the *previous*
      call (one call per step instead of two; a
      step moves the scores little relative to ``T``, and the scores/objective reported at each step
      are exact). ``T_b = 0.5 * RMS_u(s_bu(z0) - tau_u)`` per design, fixed for the run: a design far
      below every threshold still gets gradient from every user, a design near them is scored
      almost like the hard share. F is scaled by ``4 T_b`` so that it is in score units and a user at
      the threshold weighs 1/U as in MEAN: ``realism_weight`` means the same for both objectives.
      Calls: ``steps + 2`` (one extra for the starting scores).

    ``on_step`` is awaited at steps 0..steps with the objective of that point. Returns the final
    iterate (not the best one seen).
    """
    z0, category, theta = np.asarray(z0), np.asarray(category), np.asarray(theta)
    _require(z0.ndim == 2, f"z0 must be (B, Dz), got shape {z0.shape}")
    _require(
        category.ndim == 2 and category.shape[0] == z0.shape[0],
        f"category must be (B={z0.shape[0]}, C), got shape {category.shape}",
    )
    _require(theta.ndim == 2 and theta.shape[0] >= 1, f"theta must be (U, K) with U >= 1, got shape {theta.shape}")
    _require(steps >= 0, f"steps must be >= 0, got {steps}")
    if objective == "top_k_share":
        _require(thresholds is not None, "top_k_share needs thresholds (U,)")
        tau = np.asarray(thresholds, dtype=np.float64)
        _require(tau.shape == (theta.shape[0],), f"thresholds must be (U={theta.shape[0]},), got shape {tau.shape}")
    elif objective != "mean":
        raise ValueError(f"objective must be 'mean' or 'top_k_share', got {objective!r}")
    version = versions.get(PREF_GRAD, "")
    b, n_users = z0.shape[0], theta.shape[0]
    uniform = np.full((b, n_users), 1.0 / n_users)

    w = _to_w(z0)
    z = np.tanh(w)
    adam = Adam(learning_rate, maximise=True)
    history: list[np.ndarray] = []
    smooth: list[np.ndarray] = []
    values: list[np.ndarray] = []
    calls = 0
    temp: np.ndarray | None = None
    weight = uniform
    if objective == "top_k_share":
        out = await _pref(backend, version, z, category, row_theta(uniform, theta), realism_weight)
        calls += 1
        start = user_scores(out["phi"], theta)
        temp = TOPK_TEMPERATURE_FACTOR * np.sqrt(((start - tau[None]) ** 2).mean(axis=1)) + 1e-6
        weight = _topk_terms(start, tau, temp)[2]
    for t in range(steps + 1):
        sent = row_theta(weight, theta)  # MEAN: the group's mean vector in every row
        out = await _pref(backend, version, z, category, sent, realism_weight)
        calls += 1
        scores = user_scores(out["phi"], theta)
        if objective == "mean":
            obj = smooth_obj = pref_term = scores.mean(axis=1)
        else:
            assert temp is not None
            obj, smooth_obj, weight = _topk_terms(scores, tau, temp)
            pref_term = 4.0 * temp * smooth_obj
        if t == 0:
            scores_before = scores
        history.append(obj)
        smooth.append(smooth_obj)
        values.append(pref_term - realism_term(out["value"], out["phi"], sent))
        if on_step is not None:
            await on_step(t, z.astype(np.float32), obj.astype(np.float32), out["image"])
        if t == steps:
            break
        w, z = _tanh_adam_step(adam, w, out["grad_z"])
    return PreferenceResult(
        z=z.astype(np.float32),
        image=out["image"],
        scores_before=scores_before.astype(np.float32),
        scores_after=scores.astype(np.float32),
        objective_before=history[0],
        objective_after=history[-1],
        realism=out["realism"].reshape(-1),
        history=np.stack(history),
        smooth_history=np.stack(smooth),
        value_history=np.stack(values),
        temperature=temp,
        calls=calls,
    )


# -- inversion -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InversionResult:
    """Best reconstruction over restarts and steps. ``R`` restarts, ``T = steps + 1`` points."""

    z: np.ndarray  # (1,Dz) best latent seen, inside (-1, 1)
    image: np.ndarray  # (1,3,S,S) G(z)
    loss: float  # inv_grad value at z (MSE + perceptual weight * perceptual)
    best_restart: int
    best_step: int
    history: np.ndarray  # (T,R) loss of every restart at every step (row 0 = start)
    calls: int = 0


async def invert(
    backend: InferenceBackend,
    *,
    target: np.ndarray,
    category: np.ndarray,
    steps: int = DEFAULT_INVERSION_STEPS,
    learning_rate: float = DEFAULT_INVERSION_LEARNING_RATE,
    restarts: int = DEFAULT_RESTARTS,
    seed: int | None = 0,
    z_dim: int | None = None,
    versions: Mapping[str, str] = {},
    on_step: OnStep | None = None,
) -> InversionResult:
    """Minimise ``inv_grad`` (pixel MSE + perceptual distance to ``target``) over ``z = tanh(w)``.

    ``target (1,3,S,S)`` in [-1, 1], ``category (1,C)``; ``z_dim`` (the generator's latent size) is read
    from ``inv_grad``'s input shape when not given. The restarts run as one batched call per step
    (B = restarts, target repeated); starts are drawn from the prior U[-1, 1] with ``seed``. The
    best (restart, step) point seen is returned, so it is never worse than any restart's start.
    ``on_step`` gets the losses ``(R,)`` of all restarts. Calls: ``steps + 1``.
    """
    target, category = np.asarray(target), np.asarray(category)
    _require(target.ndim == 4 and target.shape[0] == 1, f"target must be (1, 3, S, S), got shape {target.shape}")
    _require(category.ndim == 2 and category.shape[0] == 1, f"category must be (1, C), got shape {category.shape}")
    _require(restarts >= 1 and steps >= 0, f"need restarts >= 1 and steps >= 0, got {restarts} and {steps}")
    version = versions.get(INV_GRAD, "")
    if z_dim is None:
        z_dim = int((await backend.input_shapes(INV_GRAD, version))["z"][-1])
    _require(z_dim >= 1, f"z_dim must be >= 1, got {z_dim}")
    tgt = _f32(np.repeat(target, restarts, axis=0))
    cat = _f32(np.repeat(category, restarts, axis=0))
    w = _to_w(sample_prior(restarts, z_dim, seed))
    z = np.tanh(w)
    adam = Adam(learning_rate, maximise=False)
    history: list[np.ndarray] = []
    best_loss, best = np.inf, (0, 0)
    best_z = best_image = None
    for t in range(steps + 1):
        out = await backend.infer(INV_GRAD, {"z": _f32(z), "category": cat, "target": tgt}, version=version)
        loss = out["value"].astype(np.float64)
        history.append(loss)
        r = int(np.argmin(loss))
        if loss[r] < best_loss:
            best_loss, best = float(loss[r]), (r, t)
            best_z, best_image = z[r : r + 1].astype(np.float32), out["image"][r : r + 1]
        if on_step is not None:
            await on_step(t, z.astype(np.float32), loss.astype(np.float32), out["image"])
        if t == steps:
            break
        w, z = _tanh_adam_step(adam, w, out["grad_z"])
    assert best_z is not None and best_image is not None
    return InversionResult(
        z=best_z,
        image=best_image,
        loss=best_loss,
        best_restart=best[0],
        best_step=best[1],
        history=np.stack(history),
        calls=steps + 1,
    )


# -- GIGS seller shifts --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShiftResult:
    """``n`` variants around the base latent. Preferences are ``sum_u user_weight_u * s_u``."""

    z: np.ndarray  # (n,Dz) variant latents, inside the box
    shifts: np.ndarray  # (n,Dz) z - base_z
    image: np.ndarray  # (n,3,S,S)
    base_image: np.ndarray  # (3,S,S)
    shift_norm: np.ndarray  # (n,) <= radius
    preference_before: float  # of the base item
    preference_after: np.ndarray  # (n,)
    preference_shift: np.ndarray  # (n,) after - before
    opposite_ssim: np.ndarray  # (n,) 1 - SSIM(variant, base)
    realism: np.ndarray  # (n,) D(G(z))
    nearest_distance: np.ndarray  # (n,) RMS pixel distance to the closest other variant (nan if n == 1)
    min_pairwise_distance: float  # min of nearest_distance (nan if n == 1)
    history: np.ndarray  # (steps,) shift objective at the start of each step
    calls: int = 0


def _project(base: np.ndarray, shifts: np.ndarray, radius: float) -> np.ndarray:
    """Shifts such that base + shift is in the box and ||shift|| <= radius (box first, then ball).

    Scaling a shift towards 0 moves the variant along the segment from base (in the box) to the
    clipped point (in the box), so the ball projection keeps the box constraint.
    """
    shifts = np.clip(base[None] + shifts, *LATENT_BOX) - base[None]
    norm = np.linalg.norm(shifts, axis=1, keepdims=True)
    projected: np.ndarray = shifts * np.minimum(1.0, radius / np.maximum(norm, 1e-12))
    return projected


def _rms_distances(images: np.ndarray) -> np.ndarray:
    """(n,n) RMS pixel distance between images (n,3,S,S)."""
    flat = images.reshape(images.shape[0], -1).astype(np.float64)
    sq = ((flat[:, None] - flat[None]) ** 2).mean(axis=2)
    distances: np.ndarray = np.sqrt(sq)
    return distances


async def seller_shifts(
    backend: InferenceBackend,
    *,
    base_z: np.ndarray,
    category: np.ndarray,
    theta: np.ndarray,
    user_weight: np.ndarray,
    n: int = DEFAULT_SHIFTS,
    radius: float = DEFAULT_SHIFT_RADIUS,
    diversity_weight: float = DEFAULT_DIVERSITY_WEIGHT,
    realism_weight: float = DEFAULT_REALISM_WEIGHT,
    steps: int = DEFAULT_SHIFT_STEPS,
    learning_rate: float | None = None,
    seed: int | None = 0,
    versions: Mapping[str, str] = {},
) -> ShiftResult:
    """GIGS: ``n`` shifts of ``base_z`` (Dz,) maximising ``shift_grad`` (preference - diversity penalty).

    ``category (C,)``, ``theta (U,K)``, ``user_weight (U,)`` (1/U = the group mean). ``base_z`` is
    clipped into the box. Shifts start as random orthogonal directions (n <= Dz) of norm
    ``radius / 2``; after each Adam step they are projected: ``z = clip(base + shift, box)``, then
    the shift onto the L2 ball of ``radius`` (a feasible point of box and ball, not their exact
    Euclidean projection). Returns the final shifts. The preferences and images reported come from
    one ``pref_grad`` call (B = n + 1, realism weight 0) on the base and the final variants.
    Calls: ``steps`` shift_grad + 1 pref_grad.

    Learning rate (default :func:`default_shift_learning_rate` of ``radius``): Adam moves every
    coordinate by about ``learning_rate`` per step, i.e. the shift by ~``learning_rate * sqrt(Dz)``
    (6% of the radius with Dz = 100), the same share of the ball at any radius.
    """
    base = np.clip(np.asarray(base_z, dtype=np.float64), *LATENT_BOX)
    category, theta, user_weight = np.asarray(category), np.asarray(theta), np.asarray(user_weight)
    _require(base.ndim == 1, f"base_z must be (Dz,), got shape {base.shape}")
    _require(category.ndim == 1, f"category must be (C,), got shape {category.shape}")
    _require(theta.ndim == 2, f"theta must be (U, K), got shape {theta.shape}")
    _require(
        user_weight.shape == (theta.shape[0],),
        f"user_weight must be (U={theta.shape[0]},), got shape {user_weight.shape}",
    )
    _require(n >= 1 and radius > 0 and steps >= 0, f"need n >= 1, radius > 0, steps >= 0; got {n}, {radius}, {steps}")
    _require(n <= base.size, f"n={n} shifts need n <= Dz={base.size}")
    directions = np.linalg.qr(np.random.default_rng(seed).standard_normal((base.size, n)))[0].T  # (n,Dz) orthonormal
    shifts = _project(base, 0.5 * radius * directions, radius)
    group_theta = row_theta(user_weight[None], theta)  # (1,K): the audience as one user vector
    inputs = {
        "base_z": _f32(base[None]),
        "category": _f32(category[None]),
        "theta": group_theta,
        "weights": np.array([[diversity_weight, realism_weight]], dtype=np.float32),
    }
    adam = Adam(default_shift_learning_rate(radius) if learning_rate is None else learning_rate, maximise=True)
    history = []
    version = versions.get(SHIFT_GRAD, "")
    for _ in range(steps):
        out = await backend.infer(SHIFT_GRAD, {**inputs, "shifts": _f32(shifts[None])}, version=version)
        history.append(float(out["value"][0]))
        shifts = _project(base, adam.step(shifts, out["grad_shifts"][0]), radius)
    z = base[None] + shifts
    both = np.concatenate([base[None], z])
    ev = await _pref(
        backend,
        versions.get(PREF_GRAD, ""),
        both,
        np.repeat(category[None], n + 1, axis=0),
        np.repeat(group_theta, n + 1, axis=0),
        0.0,
    )
    return shift_result(base, shifts, ev, np.array(history), calls=steps + 1)


def shift_result(
    base: np.ndarray, shifts: np.ndarray, evaluated: Mapping[str, np.ndarray], history: np.ndarray, calls: int
) -> ShiftResult:
    """The :class:`ShiftResult` of final ``shifts (n,Dz)`` around ``base (Dz,)``; ``evaluated``: the
    ``value``, ``image`` and ``realism`` of a ``pref_grad`` evaluation (realism weight 0) of the rows
    ``[base, base + shift_1, ..., base + shift_n]``."""
    z = base[None] + shifts
    pref = evaluated["value"].astype(np.float64)  # realism weight 0: sum_u w_u s_u
    images = evaluated["image"]
    if shifts.shape[0] > 1:
        dist = _rms_distances(images[1:])
        np.fill_diagonal(dist, np.inf)
        nearest = dist.min(axis=1)
    else:
        nearest = np.full(1, np.nan)
    return ShiftResult(
        z=z.astype(np.float32),
        shifts=shifts.astype(np.float32),
        image=images[1:],
        base_image=images[0],
        shift_norm=np.linalg.norm(shifts, axis=1),
        preference_before=float(pref[0]),
        preference_after=pref[1:],
        preference_shift=pref[1:] - pref[0],
        opposite_ssim=1.0 - ssim(images[1:], images[0]),
        realism=evaluated["realism"].reshape(-1)[1:],
        nearest_distance=nearest,
        min_pairwise_distance=float(nearest.min()),
        history=history,
        calls=calls,
    )
