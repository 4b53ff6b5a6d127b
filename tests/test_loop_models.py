"""Loop models (inv_loop, pref_loop, shift_loop): K Adam steps in one ONNX call, against the numpy reference.

The gradient models are exported from small couturier networks (as in test_gradient_models, ~30 s),
the loop models built around them; every check runs both in onnxruntime. The reference is the
service's numpy optimiser (``optimize.Adam``, ``optimize._project``; ``optimize.invert`` and friends
through the in-process backend for the service-level test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from torch import nn  # noqa: E402

from couturier.export.gradient_models import export_gradient_models  # noqa: E402
from couturier.export.loop_models import (  # noqa: E402
    LOOP_SPECS,
    build_loop_models,
    check_loop_model,
    example_feeds,
    reference_steps,
)
from couturier.export.models.dvbpr import DvbprConfig, ItemEncoder  # noqa: E402
from couturier.export.models.gan import Discriminator, GanConfig, Generator  # noqa: E402
from couturier.export.models.perceptual import PerceptualDistance  # noqa: E402
from couturier.export.onnx_io import make_session, onnx_signature, read_metadata  # noqa: E402
from couturier.services.common.model_metadata import decode_categories  # noqa: E402
from couturier.services.common.models import GRADIENT_MODELS, INV_LOOP, LOOP_MODELS  # noqa: E402

pytestmark = pytest.mark.integration  # exports gradient models (torch, ~30 s)

DZ, NCAT, K, S = 8, 3, 8, 32
NAMES = ("boots", "sandals", "slippers")


def _init(m: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(mod.weight, 0.0, 0.25)
            if mod.bias is not None:
                nn.init.normal_(mod.bias, 0.0, 0.1)
    return m.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three gradient models of small random networks and their loop models: name -> path."""
    gc = GanConfig(image_size=S, z_dim=DZ, n_categories=NCAT, g_channels=(16, 8, 8), d_channels=(8, 8, 16))
    enc = _init(ItemEncoder(DvbprConfig(n_users=4, image_size=S, k=K, channels=(8, 8, 8), hidden=16)), 3)
    out = tmp_path_factory.mktemp("loop_models")
    grads = export_gradient_models(
        _init(Generator(gc), 1), _init(Discriminator(gc), 2), enc, PerceptualDistance(enc), out, categories=NAMES
    )
    return {**grads, **build_loop_models(grads, out)}


def _outputs(session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _feeds(models: dict[str, Path], name: str, steps: list[int], seed: int = 0) -> tuple[dict[str, np.ndarray], Any]:
    """Loop-model inputs at a random start (gradient from the gradient model), ``steps`` per row."""
    spec = LOOP_SPECS[name]
    start, others = example_feeds(models[spec.gradient_model], spec, batch=len(steps), seed=seed)
    gradient = make_session(models[spec.gradient_model], threads=1)
    x = np.tanh(start) if spec.constraint == "tanh" else start
    first = _outputs(gradient, {**others, spec.variable: x.astype(np.float32)})
    rows = len(steps)
    feeds = {
        spec.state_inputs[0]: start,
        "m": np.zeros_like(start),
        "v": np.zeros_like(start),
        spec.gradient: first[spec.gradient],
        "step": np.zeros((rows, 1), np.int64),
        "steps": np.array(steps, np.int64)[:, None],
        "evaluate_first": np.zeros((rows, 1), np.bool_),
        "learning_rate": np.full((rows, 1), 0.05),
        **others,
    }
    if spec.constraint == "ball":
        feeds["radius"] = np.full((rows, 1), 1.0)
    return feeds, gradient


def test_loop_models_signature_and_metadata(models: dict[str, Path]) -> None:
    for name in LOOP_MODELS:
        spec = LOOP_SPECS[name]
        model = onnx.load(models[name])
        onnx.checker.check_model(model, full_check=True)
        sig = onnx_signature(models[name])
        grad_sig = onnx_signature(models[spec.gradient_model])
        assert sig.opset == 18
        assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}  # standard ops only
        assert [n.op_type for n in model.graph.node if n.op_type == "Loop"] == ["Loop"]
        others = [n for n in grad_sig.input_names if n != spec.variable]
        assert tuple(sig.input_names) == (*spec.state_inputs, *spec.row_inputs, *others)
        assert set(sig.output_names) >= {*spec.state_outputs, "z", "value", "value_history", *spec.best_outputs}
        assert all(t.shape[0] == "batch" for t in (*sig.inputs, *sig.outputs))  # Triton's batch axis
        meta = read_metadata(models[name])
        assert decode_categories(meta["categories"]) == NAMES
        assert meta["loop.gradient_model"] == spec.gradient_model and meta["loop.constraint"] == spec.constraint
        assert len(model.graph.initializer) >= len(onnx.load(models[spec.gradient_model]).graph.initializer)


@pytest.mark.parametrize("name", LOOP_MODELS)
def test_k_steps_match_k_reference_steps(models: dict[str, Path], name: str) -> None:
    """One step: the Adam update and constraint are the reference's to float64 rounding. Eight steps:
    within float32 tolerance (the gradient graph inside the loop rounds differently in float32, ~1e-6
    relative, and these random networks amplify it over the steps)."""
    spec = LOOP_SPECS[name]
    one = check_loop_model(
        models[spec.gradient_model], models[name], spec, steps=1, batch=3, threads=1, evaluate_first=False
    )
    assert one["param_max_abs_err"] < 1e-12 and one["m_max_rel_err"] < 1e-12 and one["v_max_rel_err"] < 1e-12, one
    assert one["value_max_rel_err"] < 1e-5 and one["grad_max_rel_err"] < 1e-5, one
    report = check_loop_model(models[spec.gradient_model], models[name], spec, steps=8, batch=3, threads=1)
    assert report["ok"], report
    assert report["step_max_abs_err"] < 1e-12 and report["end_value_max_rel_err"] < 1e-5, report
    assert report["end_grad_rel_err_median"] < 1e-4, report
    assert report["param_max_abs_err"] < 1e-4, report
    assert report["m_max_rel_err"] < 1e-3 and report["v_max_rel_err"] < 1e-3, report
    assert report["value_max_rel_err"] < 1e-4 and report["history_max_rel_err"] < 1e-4, report


@pytest.mark.parametrize("name", LOOP_MODELS)
def test_two_chained_calls_equal_one_call_of_twice_the_steps(models: dict[str, Path], name: str) -> None:
    spec = LOOP_SPECS[name]
    feeds, _ = _feeds(models, name, [6, 6], seed=1)
    loop = make_session(models[name], threads=1)
    once = _outputs(loop, feeds)
    half = _outputs(loop, {**feeds, "steps": np.full((2, 1), 3, np.int64)})
    state = dict(zip(spec.state_inputs, (half[n] for n in spec.state_outputs), strict=True))
    twice = _outputs(
        loop, {**feeds, **state, "step": np.full((2, 1), 3, np.int64), "steps": np.full((2, 1), 3, np.int64)}
    )
    for key in (*spec.state_outputs, "z", "value"):
        np.testing.assert_allclose(twice[key], once[key], rtol=1e-9, atol=1e-12, err_msg=key)
    history = np.concatenate([half["value_history"], twice["value_history"]], axis=1)
    np.testing.assert_allclose(history, once["value_history"], rtol=1e-9, atol=1e-12)
    if spec.best:  # the best of the two halves is the best of the whole
        halves = np.where(twice["best_value"] < half["best_value"], twice["best_step"], half["best_step"])
        np.testing.assert_array_equal(halves, once["best_step"])


@pytest.mark.parametrize("name", LOOP_MODELS)
def test_rows_run_their_own_step_count(models: dict[str, Path], name: str) -> None:
    """Rows of one batch with K = 0, 2, 5: each as if it ran alone; K = 0 only evaluates the start point."""
    spec = LOOP_SPECS[name]
    feeds, gradient = _feeds(models, name, [0, 2, 5], seed=2)
    loop = make_session(models[name], threads=1)
    batch = _outputs(loop, feeds)
    for row, k in enumerate([0, 2, 5]):
        alone = _outputs(loop, {key: value[row : row + 1] for key, value in feeds.items()})
        for key in (*spec.state_outputs, "z", "value", *spec.best_outputs):
            # float32 kernels round differently at batch 3 and batch 1: equal within float32 tolerance
            np.testing.assert_allclose(batch[key][row : row + 1], alone[key], rtol=1e-4, atol=1e-5, err_msg=(row, key))
        history, points = batch["value_history"][row], max(k, 1)
        assert history.shape == (5,) and np.isfinite(history[:points]).all() and np.isnan(history[points:]).all()
    start = feeds[spec.state_inputs[0]][0]
    np.testing.assert_array_equal(batch[spec.state_outputs[0]][0], start)  # K = 0: state unchanged ...
    x = np.tanh(start) if spec.constraint == "tanh" else start
    others = {k: v[:1] for k, v in feeds.items() if k in {i.name for i in gradient.get_inputs()}}
    at_start = _outputs(gradient, {**others, spec.variable: x[None].astype(np.float32)})
    np.testing.assert_allclose(batch["value"][0], at_start["value"][0], rtol=1e-5)  # ... and evaluated


@pytest.mark.parametrize("name", LOOP_MODELS)
def test_evaluate_first_is_a_gradient_model_call_then_the_steps(models: dict[str, Path], name: str) -> None:
    """A run's first call (``evaluate_first``, gradient input ignored) equals the gradient model at the
    start point followed by a call from its gradient; rows of both kinds share a batch."""
    spec = LOOP_SPECS[name]
    feeds, _ = _feeds(models, name, [4, 4], seed=4)
    loop = make_session(models[name], threads=1)
    given = _outputs(loop, feeds)  # row gradients from the gradient model
    first = {**feeds, spec.gradient: np.zeros_like(feeds[spec.gradient]), "evaluate_first": np.ones((2, 1), np.bool_)}
    evaluated = _outputs(loop, first)
    for key in (*spec.state_outputs, "z", "value"):  # the gradient in the loop rounds differently (float32)
        assert np.abs(evaluated[key] - given[key]).max() <= 1e-4 * np.abs(given[key]).max(), key
    assert evaluated["value_history"].shape == (2, 5)  # the start point, then 4 steps
    np.testing.assert_allclose(evaluated["value_history"][:, 1:], given["value_history"][:, :4], rtol=1e-4, atol=1e-6)
    mixed = {**feeds, "evaluate_first": np.array([[True], [False]])}
    mixed[spec.gradient] = np.stack([np.zeros_like(feeds[spec.gradient][0]), feeds[spec.gradient][1]])
    both = _outputs(loop, mixed)
    np.testing.assert_allclose(both["value"], given["value"], rtol=1e-4, atol=1e-5)
    assert np.isnan(both["value_history"][1, 4]) and np.isfinite(both["value_history"][0]).all()


def test_inversion_keeps_the_best_point_of_each_row(models: dict[str, Path]) -> None:
    spec = LOOP_SPECS[INV_LOOP]
    feeds, gradient = _feeds(models, INV_LOOP, [6, 6, 6], seed=3)
    feeds["learning_rate"][:] = 0.5  # large steps: the loss goes up and down, the best is not the last
    got = _outputs(make_session(models[INV_LOOP], threads=1), feeds)
    others = {k: v for k, v in feeds.items() if k in ("category", "target")}
    _, _, points = reference_steps(gradient, spec, feeds["w"], others, steps=6, learning_rate=0.5, maximise=False)
    values = np.stack([p["value"] for p in points[1:]], axis=1)  # (B, 6): steps 1..6
    np.testing.assert_array_equal(got["best_step"], values.argmin(axis=1) + 1)
    np.testing.assert_allclose(got["best_value"], values.min(axis=1), rtol=1e-5)
    for row, step in enumerate(got["best_step"]):
        np.testing.assert_allclose(got["best_image"][row], points[step]["image"][row], atol=1e-3)  # float32 drift


def test_publish_serves_loop_models_batched(models: dict[str, Path], tmp_path: Path) -> None:
    from couturier.export.pipeline import publish_all
    from couturier.services.common.model_repository import read_model_config

    publish_all({m: models[m] for m in (*GRADIENT_MODELS, *LOOP_MODELS)}, tmp_path)
    for name in LOOP_MODELS:
        config = read_model_config(tmp_path, name)
        assert config.max_batch_size > 0 and config.HasField("dynamic_batching"), name
        dims = {t.name: list(t.dims) for t in config.input}
        assert dims["steps"] == [1] and dims["learning_rate"] == [1], dims
        assert config.parameters["couturier.categories"].string_value


# -- the latent service on both optimisers, over the same exported models -----------------------------


async def test_service_answers_the_same_on_both_optimisers(models: dict[str, Path], tmp_path: Path) -> None:
    from couturier.export.pipeline import publish_all
    from couturier.services.common.config import LatentSettings
    from couturier.services.common.inference import OnnxRuntimeBackend
    from support.latent_requests import compare_responses, requests

    publish_all({m: models[m] for m in (*GRADIENT_MODELS, *LOOP_MODELS)}, tmp_path)
    answers = {}
    for optimiser in ("reference", "loop"):
        backend = OnnxRuntimeBackend(tmp_path, intra_op_threads=1, max_workers=1)
        try:
            settings = LatentSettings(optimiser=optimiser, loop_steps=4, model_repository=str(tmp_path))
            answers[optimiser] = await requests(backend, settings, category=NAMES[1], k=K)
        finally:
            await backend.close()
    compare_responses(answers["reference"], answers["loop"], loop_steps=4)
