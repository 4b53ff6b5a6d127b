"""The loop models (``inv_loop``, ``pref_loop``, ``shift_loop``) for the fake backend, in numpy.

Each runs the semantics of :mod:`couturier.export.loop_models` (Adam in float64 in the operation
order of ``optimize.Adam``, the tanh box or the box-and-ball projection, ``evaluate_first``, per-row
step counts with masking, best point and per-step histories) over the fake gradient model of the
same objective, so the latent service's loop optimiser runs on the fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from couturier.services.common.loop_specs import (
    ADAM_BETA1,
    ADAM_BETA2,
    ADAM_EPS,
    LOOP_SPECS,
    ROW_INPUT_TYPES,
    LoopSpec,
)
from couturier.services.common.models import INV_GRAD

__all__ = ["loop_output_dtypes", "loop_signatures", "run_loop"]

Signature = tuple[dict[str, tuple[Any, tuple[int, ...]]], dict[str, tuple[int, ...]]]


def _maximise(spec: LoopSpec) -> bool:
    return spec.gradient_model != INV_GRAD  # the fake models' directions (the real ones carry it as metadata)


def loop_signatures(gradient: Mapping[str, Signature]) -> dict[str, Signature]:
    """The loop models' signatures from their gradient models' (``-1`` = dynamic axis)."""
    out: dict[str, Signature] = {}
    for name, spec in LOOP_SPECS.items():
        g_in, g_out = gradient[spec.gradient_model]
        state = g_in[spec.variable][1]
        param, m, v, grad = spec.state_inputs
        inputs: dict[str, tuple[Any, tuple[int, ...]]] = {
            param: (np.float64, state),
            m: (np.float64, state),
            v: (np.float64, state),
            grad: (np.float32, state),
        }
        for row in spec.row_inputs:
            inputs[row] = (np.dtype(ROW_INPUT_TYPES[row]).type, (-1, 1))
        inputs.update({k: sig for k, sig in g_in.items() if k != spec.variable})
        outputs = {n: state for n in spec.state_outputs}
        outputs.update({k: shape for k, shape in g_out.items() if k != spec.gradient})
        if spec.best:
            outputs.update({"best_value": (-1,), "best_step": (-1,), spec.best_outputs[2]: state})
            outputs.update({f"best_{o}": g_out[o] for o in spec.best})
        outputs.update({spec.history_output(h): (-1, -1, *g_out[h][1:]) for h in spec.history})
        outputs["z"] = state
        out[name] = (inputs, outputs)
    return out


def loop_output_dtypes() -> dict[tuple[str, str], type]:
    """(model, output) -> dtype for the loop models' outputs that are not float32."""
    dtypes: dict[tuple[str, str], type] = {}
    for name, spec in LOOP_SPECS.items():
        dtypes.update({(name, n): np.float64 for n in spec.state_outputs[:3]})
        if spec.best:
            dtypes[(name, "best_step")] = np.int64
    return dtypes


def _col(x: np.ndarray, rank: int) -> np.ndarray:
    return x.reshape((-1,) + (1,) * (rank - 1))


def run_loop(
    spec: LoopSpec, gradient: Callable[..., dict[str, np.ndarray]], inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """One call of the loop model ``spec`` over the fake gradient model ``gradient``."""
    maximise = _maximise(spec)
    name_p, name_m, name_v, name_g = spec.state_inputs
    param = np.asarray(inputs[name_p], np.float64)
    m, v = np.asarray(inputs[name_m], np.float64), np.asarray(inputs[name_v], np.float64)
    grad = np.asarray(inputs[name_g], np.float32)
    step, steps = inputs["step"].reshape(-1), inputs["steps"].reshape(-1)
    first = inputs["evaluate_first"].reshape(-1).astype(np.int64)
    end, n_eval = steps + first, np.maximum(steps + first, 1)
    rate = np.asarray(inputs["learning_rate"], np.float64).reshape(-1)
    own = {*spec.state_inputs, *spec.row_inputs}
    others = {k: np.asarray(a) for k, a in inputs.items() if k not in own}
    rank = param.ndim
    base = radius = None
    if spec.constraint == "ball":
        base = np.clip(np.asarray(others[spec.base], np.float64), -1.0, 1.0)[:, None, :]
        radius = _col(np.asarray(inputs["radius"], np.float64), rank)
    aux: dict[str, np.ndarray] = {}
    best: dict[str, np.ndarray] = {}
    history: dict[str, list[np.ndarray]] = {h: [] for h in spec.history}
    for i in range(int(n_eval.max())):
        stepping, active = (i >= first) & (i < end), i < n_eval
        taken = i + 1 - first  # steps taken once this iteration has stepped
        # rows not stepping this iteration may have t = 0; their update is masked out below
        t = _col(np.maximum(step + taken, 1).astype(np.float64), rank)
        g = grad.astype(np.float64)
        if spec.constraint == "tanh":
            z_old = np.tanh(param)
            g = g * (1.0 - z_old * z_old)
        m1 = ADAM_BETA1 * m + (1 - ADAM_BETA1) * g
        v1 = ADAM_BETA2 * v + (1 - ADAM_BETA2) * g * g
        m_hat = m1 / (1 - ADAM_BETA1**t)
        v_hat = v1 / (1 - ADAM_BETA2**t)
        update = _col(rate, rank) * m_hat / (np.sqrt(v_hat) + ADAM_EPS)
        p1 = param + update if maximise else param - update
        if spec.constraint == "ball":
            assert base is not None and radius is not None
            p1 = np.clip(base + p1, -1.0, 1.0) - base
            norm = np.linalg.norm(p1, axis=-1, keepdims=True)
            p1 = p1 * np.minimum(1.0, radius / np.maximum(norm, 1e-12))
        mask = _col(stepping, rank)
        param, m, v = np.where(mask, p1, param), np.where(mask, m1, m), np.where(mask, v1, v)
        x = (np.tanh(param) if spec.constraint == "tanh" else param).astype(np.float32)
        out = {k: np.asarray(a, np.float32) for k, a in gradient(**{spec.variable: x, **others}).items()}
        grad = np.where(_col(active, rank), out[spec.gradient], grad)
        for k, a in out.items():
            if k != spec.gradient:
                aux[k] = np.where(_col(active, a.ndim), a, aux.get(k, np.full_like(a, np.nan)))
        for h in spec.history:
            history[h].append(np.where(_col(active, out[h].ndim), out[h], np.nan))
        if spec.best:
            value = out["value"]
            prev = best.get("best_value", np.full_like(value, -np.inf if maximise else np.inf))
            better = active & ((value > prev) if maximise else (value < prev))
            best["best_value"] = np.where(better, value, prev)
            best["best_step"] = np.where(better, step + np.minimum(taken, steps), best.get("best_step", -1))
            for key, src in [(spec.best_outputs[2], x), *((f"best_{o}", out[o]) for o in spec.best)]:
                best[key] = np.where(_col(better, src.ndim), src, best.get(key, np.full_like(src, np.nan)))
    result = dict(zip(spec.state_outputs, (param, m, v, grad), strict=True))
    result.update(aux)
    result.update(best)
    result.update({spec.history_output(h): np.stack(rows, axis=1) for h, rows in history.items()})
    result["z"] = (np.tanh(param) if spec.constraint == "tanh" else base + param).astype(np.float32)
    return result
