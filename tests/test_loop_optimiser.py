"""The latent service's loop optimiser (K Adam steps per model call) against the numpy reference, on the fakes.

The fake backend runs the loop models' semantics in numpy (support.fake_loops) over its fake
gradient models; the ONNX loop models themselves are tested in test_loop_models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from couturier.services.common.config import LatentSettings
from couturier.services.common.models import (
    GRADIENT_MODELS,
    INV_GRAD,
    INV_LOOP,
    LOOP_MODELS,
    PREF_GRAD,
    PREF_LOOP,
    SHIFT_GRAD,
    SHIFT_LOOP,
)
from couturier.services.latent import loop_optimize, optimize
from couturier.services.latent import service as latent_service
from couturier.services.latent.service import Latent, LatentServicer
from couturier.v1 import common_pb2, latent_pb2
from support.fakes import FAKE_CATEGORIES, FakeInferenceBackend
from support.latent_requests import ALTER_STEPS, compare_responses, requests


@pytest.mark.parametrize(
    ("steps", "loop_steps", "report_every", "sizes"),
    [
        (10, 10, 0, [10]),
        (25, 10, 0, [10, 10, 5]),
        (25, 10, 1, [10, 10, 5]),  # report_every < K: reports every K
        (50, 10, 25, [10, 10, 5, 10, 10, 5]),  # report_every > K: calls end at its multiples
        (7, 3, 3, [3, 3, 1]),
        (0, 5, 0, []),
    ],
)
def test_call_sizes_end_a_call_at_every_report(
    steps: int, loop_steps: int, report_every: int, sizes: list[int]
) -> None:
    assert loop_optimize.call_sizes(steps, loop_steps, report_every) == sizes
    assert sum(sizes) == steps


def test_loop_steps_default_is_the_optimisers() -> None:
    assert LatentSettings().loop_steps == loop_optimize.DEFAULT_LOOP_STEPS
    assert LatentSettings().optimiser == "loop"


async def test_design_alter_and_shifts_answer_the_same_on_both_optimisers() -> None:
    answers = {}
    for optimiser in ("reference", "loop"):
        settings = LatentSettings(optimiser=optimiser, loop_steps=4)
        answers[optimiser] = await requests(FakeInferenceBackend(), settings, category="shoes", k=6)
    compare_responses(answers["reference"], answers["loop"], loop_steps=4, rtol=1e-6)
    ref, loop = answers["reference"].calls, answers["loop"].calls
    assert set(ref) == set(GRADIENT_MODELS)
    # the loop optimiser: loop models only, but for the evaluation of the seller's variants (pref_grad;
    # these requests ask for no start selection, which would add one pref_grad call)
    assert loop[PREF_GRAD] == 1 and INV_GRAD not in loop and SHIFT_GRAD not in loop
    # a streamed run (Alter) evaluates its start point in a call of its own; the others in their first call
    assert loop[INV_LOOP] == (1 + 3) + 2  # Alter: 10 steps in 4s; SellerShifts: 7 steps
    assert loop[PREF_LOOP] == 3 + (1 + 2)  # Design: 10 steps; Alter: 6 steps
    assert loop[SHIFT_LOOP] == 3  # 9 steps
    assert ref[INV_GRAD] == (ALTER_STEPS[0] + 1) + (7 + 1)


async def test_loop_invert_returns_the_reference_result() -> None:
    backend = FakeInferenceBackend()
    target = np.random.default_rng(0).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    category = optimize.one_hot(2, len(FAKE_CATEGORIES))
    kwargs = {"target": target, "category": category, "steps": 23, "learning_rate": 0.2, "restarts": 4}
    ref = await optimize.invert(backend, **kwargs)
    got = await loop_optimize.invert(backend, **kwargs, loop_steps=5)
    assert (got.best_restart, got.best_step) == (ref.best_restart, ref.best_step)
    np.testing.assert_allclose(got.history, ref.history, rtol=1e-6)
    np.testing.assert_allclose(got.z, ref.z, atol=1e-6)
    assert got.loss == pytest.approx(ref.loss, rel=1e-6) and got.calls == 5


async def test_loop_preference_and_shifts_return_the_reference_results() -> None:
    backend = FakeInferenceBackend()
    rng = np.random.default_rng(1)
    theta = rng.normal(0, 1, (5, backend.dims.item_dim)).astype(np.float32)
    category = optimize.one_hot(1, len(FAKE_CATEGORIES), 3)
    z0 = optimize.sample_prior(3, backend.dims.z_dim, 2)
    ref = await optimize.maximise_preference(backend, z0=z0, category=category, theta=theta, steps=12)
    got = await loop_optimize.maximise_preference(
        backend, z0=z0, category=category, theta=theta, steps=12, loop_steps=5
    )
    for field in ("z", "scores_before", "scores_after", "realism", "history", "value_history"):
        np.testing.assert_allclose(getattr(got, field), getattr(ref, field), rtol=1e-5, atol=1e-6, err_msg=field)
    assert (ref.calls, got.calls) == (13, 3)
    shift_args = {
        "base_z": z0[0],
        "category": category[0],
        "theta": theta,
        "user_weight": np.full(5, 0.2, np.float32),
        "n": 3,
        "radius": 1.5,
        "steps": 11,
    }
    ref_s = await optimize.seller_shifts(backend, **shift_args)
    got_s = await loop_optimize.seller_shifts(backend, **shift_args, loop_steps=4)
    for field in ("shifts", "z", "preference_after", "shift_norm", "history"):
        np.testing.assert_allclose(getattr(got_s, field), getattr(ref_s, field), rtol=1e-5, atol=1e-6, err_msg=field)
    assert np.all(got_s.shift_norm <= 1.5 + 1e-9) and np.all(np.abs(got_s.z) <= 1.0)


def _audience(top_k: int = 0) -> latent_pb2.ResolvedAudience:
    out = latent_pb2.ResolvedAudience(
        model=common_pb2.ModelVersion(name="item_encoder", version="1"), top_k=top_k, category="tops"
    )
    for i in range(3):
        out.users.add(user_id=f"u{i}", vector=[0.1 * (i + 1)] * 6, kth_best_score=0.1 * i)
    return out


async def test_top_k_share_designs_run_on_the_reference_optimiser_and_say_so() -> None:
    backend = FakeInferenceBackend()
    settings = LatentSettings(optimiser="loop", loop_steps=5)
    servicer = LatentServicer(Latent(backend, settings))
    request = latent_pb2.DesignRequest(
        category="tops", n=2, seed=1, objective=latent_pb2.TOP_K_SHARE, top_k=3, resolved_audience=_audience(3)
    )
    response = await servicer.Design(request, None)  # type: ignore[arg-type]
    assert response.generator.name == PREF_GRAD
    # start selection, the starting scores, then one call per point
    assert backend.calls[PREF_GRAD] == 1 + optimize.DEFAULT_STEPS + 2 and PREF_LOOP not in backend.calls
    definition = latent_service.build(settings, backend=backend)  # type: ignore[arg-type]
    assert definition.shown_settings["optimiser"] == "loop" and definition.shown_settings["loop_steps"] == "5"
    assert "TOP_K_SHARE" in definition.shown_settings["reference_optimiser_for"]


@pytest.mark.parametrize(
    ("optimiser", "models"), [("loop", GRADIENT_MODELS + LOOP_MODELS), ("reference", GRADIENT_MODELS)]
)
def test_health_waits_for_the_models_the_optimiser_calls(optimiser: str, models: tuple[str, ...]) -> None:
    definition = latent_service.build(LatentSettings(optimiser=optimiser), backend=FakeInferenceBackend())  # type: ignore[arg-type]
    assert {check.name for check in definition.checks} == set(models)
    assert definition.shown_settings["optimiser"] == optimiser


# -- the builder on a hand-written pref_grad stub (no torch; the exported models: test_loop_models) ----


def test_a_loop_model_around_a_stub_runs_the_reference_steps(tmp_path: Path) -> None:
    import onnx

    from couturier.export.loop_models import LOOP_SPECS, build_loop_model, check_loop_model
    from couturier.services.common.model_metadata import decode_categories
    from support.onnx_models import pref_grad_model

    stub = pref_grad_model(tmp_path / "pref_grad.onnx", ("boots", "bags"))
    with pytest.raises(ValueError, match="direction"):  # ascend or descend: the gradient model must say
        build_loop_model(stub, tmp_path / "pref_loop.onnx", LOOP_SPECS[PREF_LOOP])
    model = onnx.load(stub)
    model.metadata_props.add(key="couturier.direction", value="maximise")
    onnx.save(model, stub)
    loop = build_loop_model(stub, tmp_path / "pref_loop.onnx", LOOP_SPECS[PREF_LOOP], name=PREF_LOOP)
    meta = {p.key: p.value for p in onnx.load(loop).metadata_props}
    assert decode_categories(meta["couturier.categories"]) == ("boots", "bags")
    for first in (True, False):
        report = check_loop_model(stub, loop, LOOP_SPECS[PREF_LOOP], steps=7, batch=4, threads=1, evaluate_first=first)
        assert report["ok"] and report["step_max_abs_err"] < 1e-12, report
        assert report["param_max_abs_err"] < 1e-5 and report["history_max_rel_err"] < 1e-5, report
