"""The test fakes (tests/support/fakes.py) keep the contracts the unit tests rely on: the fake backend
serves every model with its real input/output names, its gradient models return the gradient of
their value (checked by finite differences), and the in-memory store searches exactly."""

from __future__ import annotations

import numpy as np
import pytest

from couturier.services.common.errors import DependencyUnavailable, InvalidInput, PreconditionFailed
from couturier.services.common.inference import (
    BackendUnavailable,
    BadInferenceInput,
    InferenceBackend,
    ModelNotReady,
)
from couturier.services.common.model_metadata import ModelCategories
from couturier.services.common.models import (
    ALL_MODELS,
    CATEGORY_MODELS,
    INV_GRAD,
    ITEM_ENCODER,
    LOOP_MODELS,
    PREF_GRAD,
    SHIFT_GRAD,
    SHIFT_LOOP,
)
from couturier.services.common.vectors import EmbeddingSpace, ProductVector
from couturier.services.latent.optimize import realism_term, user_scores
from support.fakes import FAKE_CATEGORIES, FAKE_REALISM_MARGIN, FakeDims, FakeInferenceBackend, InMemoryVectorStore

F32 = np.float32


def _example(
    backend: FakeInferenceBackend, model: str, rng: np.random.Generator, batch: int = 3
) -> dict[str, np.ndarray]:
    """Random inputs for ``model`` from its advertised shapes (dynamic axes: batch, then 2)."""
    dims = backend.dims
    shifts = (batch, 3, dims.z_dim)
    shapes = {
        SHIFT_GRAD: {"shifts": shifts},
        SHIFT_LOOP: dict.fromkeys(("shifts", "m", "v", "grad_shifts"), shifts),
    }.get(model, {})
    inputs = {}
    for name, shape in backend._signatures[model][0].items():
        dtype, advertised = shape
        concrete = shapes.get(name) or tuple(
            batch if i == 0 else (2 if d == -1 else d) for i, d in enumerate(advertised)
        )
        if model in LOOP_MODELS and name in ("step", "steps"):
            inputs[name] = np.full(concrete, 2, np.int64)  # every row 2 steps: no NaN history entries
        elif dtype == np.int64:
            inputs[name] = rng.integers(0, 50, concrete).astype(np.int64)
        else:
            inputs[name] = rng.uniform(-0.9, 0.9, concrete).astype(dtype)
            if model in LOOP_MODELS and name == "v":  # Adam's second moment is >= 0
                inputs[name] = np.abs(inputs[name])
    return inputs


async def test_fake_backend_serves_every_model_with_its_signature() -> None:
    backend = FakeInferenceBackend()
    assert isinstance(backend, InferenceBackend)
    rng = np.random.default_rng(0)
    for model in ALL_MODELS:
        assert await backend.is_ready(model)
        assert await backend.resolve_version(model) == "1"
        inputs = _example(backend, model, rng)
        out = await backend.infer(model, inputs)
        outputs = await backend.output_shapes(model)
        assert set(out) == set(outputs), model
        for name, array in out.items():
            assert array.dtype == backend._output_dtypes.get((model, name), F32) and array.shape[0] == 3, (model, name)
            assert len(array.shape) == len(outputs[name]), (model, name)
            assert np.isfinite(array).all(), (model, name)
        again = await backend.infer(model, inputs, outputs=[next(iter(outputs))])
        np.testing.assert_array_equal(again[next(iter(outputs))], out[next(iter(outputs))])
    assert backend.calls == dict.fromkeys(ALL_MODELS, 2)
    # every model is served batched: inputs that disagree on dim 0 are refused, as Triton would
    rows = _example(backend, PREF_GRAD, rng)
    with pytest.raises(BadInferenceInput, match="disagree on the batch size"):
        await backend.infer(PREF_GRAD, {**rows, "theta": rows["theta"][:1]})
    size = backend.dims.image_size
    assert (await backend.input_shapes(ITEM_ENCODER))["image"] == (-1, 3, size, size)


async def test_fake_models_carry_their_categories_in_their_metadata() -> None:
    backend = FakeInferenceBackend(FakeDims(categories=("boots", "sandals", "slippers")))
    categories = ModelCategories(backend)
    for model in CATEGORY_MODELS:
        assert await categories.of(model, "1") == ("boots", "sandals", "slippers")
        assert (await backend.input_shapes(model))["category"][-1] == 3
    assert [m for m in ALL_MODELS if await backend.model_metadata(m)] == list(CATEGORY_MODELS)
    assert FakeDims().categories == FAKE_CATEGORIES and FakeDims().n_categories == 6


async def test_fake_backend_checks_inputs_versions_and_availability() -> None:
    backend = FakeInferenceBackend(versions={ITEM_ENCODER: ["1", "2"]})
    image = np.zeros((1, 3, 8, 8), F32)
    with pytest.raises(BadInferenceInput, match="takes inputs"):
        await backend.infer(ITEM_ENCODER, {"pixels": image})
    with pytest.raises(BadInferenceInput, match="must be float32"):
        await backend.infer(ITEM_ENCODER, {"image": image.astype(np.float64)})
    with pytest.raises(BadInferenceInput, match="shape"):
        await backend.infer(ITEM_ENCODER, {"image": np.zeros((1, 3, 4, 4), F32)})
    with pytest.raises(BadInferenceInput, match="no outputs"):
        await backend.infer(ITEM_ENCODER, {"image": image}, ["logits"])
    # the newest version serves "", a pinned one is honoured, versions differ, unknown ones are not ready
    assert await backend.resolve_version(ITEM_ENCODER) == "2"
    v1 = (await backend.infer(ITEM_ENCODER, {"image": image + 0.5}, version="1"))["embedding"]
    v2 = (await backend.infer(ITEM_ENCODER, {"image": image + 0.5}))["embedding"]
    assert not np.allclose(v1, v2)
    assert [call.version for call in backend.history] == ["1", "2"]
    with pytest.raises(ModelNotReady):
        await backend.resolve_version(ITEM_ENCODER, "7")
    backend.unload(ITEM_ENCODER)
    assert not await backend.is_ready(ITEM_ENCODER)
    backend.unavailable = True
    with pytest.raises(BackendUnavailable):
        await backend.resolve_version(PREF_GRAD)
    assert not await backend.is_ready(PREF_GRAD)


def _finite_difference(fn, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:  # type: ignore[no-untyped-def]
    """d sum(fn(x)) / dx by central differences, float64 (each sample's value depends on its own row)."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        grad[index] = (fn(up).sum() - fn(down).sum()) / (2 * eps)
    return grad


@pytest.mark.parametrize("model", [PREF_GRAD, INV_GRAD, SHIFT_GRAD])
def test_gradient_models_return_the_gradient_of_their_value(model: str) -> None:
    backend = FakeInferenceBackend()
    nets = backend.nets("1")
    rng = np.random.default_rng(3)
    inputs = {k: v.astype(np.float64) for k, v in _example(backend, model, rng).items()}
    if model == SHIFT_GRAD:
        inputs["weights"] = np.abs(inputs["weights"]) + 0.5  # a real diversity term
        wrt, grad_name = "shifts", "grad_shifts"
    else:
        wrt, grad_name = "z", "grad_z"
    run = getattr(nets, model)
    analytic = run(**inputs)[grad_name]
    numeric = _finite_difference(lambda x: run(**{**inputs, wrt: x})["value"], inputs[wrt])
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)
    assert np.abs(analytic).max() > 1e-3  # not trivially zero


def test_gradient_models_agree_with_the_forward_models() -> None:
    nets = FakeInferenceBackend().nets("1")
    rng = np.random.default_rng(4)
    z, category = rng.uniform(-1, 1, (2, 4)), np.eye(len(FAKE_CATEGORIES))[[1, 4]]
    theta = rng.normal(size=(3, 6))
    group = np.repeat(theta.mean(0, keepdims=True), 2, axis=0)  # one user vector per row: the group's mean
    out = nets.pref_grad(z, category, group, np.ones((2, 1)))
    image = nets.generator(z, category)
    np.testing.assert_allclose(out["image"], image)
    np.testing.assert_allclose(out["phi"], nets.item_encoder(image))
    realism = nets.discriminator(image, category)
    penalty = np.minimum(realism - FAKE_REALISM_MARGIN, 0.0) ** 2
    scores = user_scores(out["phi"], theta)  # (B,U) per-user scores, computed by the service
    np.testing.assert_allclose(out["value"], scores.mean(1) - penalty)
    np.testing.assert_allclose(realism_term(out["value"], out["phi"], group), penalty, atol=1e-9)
    inv = nets.inv_grad(z, category, image[::-1].copy())
    assert inv["value"][0] > 0 and np.allclose(nets.inv_grad(z, category, image)["value"], 0)
    # identical variants: diversity 1, value = preference - diversity weight
    shift = nets.shift_grad(z, np.zeros((2, 3, 4)), category, group, np.array([[0.7, 1.0], [0.2, 1.0]]))
    np.testing.assert_allclose(shift["diversity"], 1.0)
    np.testing.assert_allclose(shift["value"], out["value"] - [0.7, 0.2])


SPACE = EmbeddingSpace("item_encoder", "1", 3, metric="IP")


async def test_memory_store_searches_exactly_with_filters() -> None:
    store = InMemoryVectorStore()
    with pytest.raises(PreconditionFailed, match="no vectors are indexed"):
        await store.search(SPACE, np.ones(3), 2)
    assert await store.count(SPACE) == 0 and await store.per_category(SPACE) == {}
    vectors = {"a": [1, 0, 0], "b": [0, 2, 0], "c": [0, 0, 3], "d": [1, 1, 1]}
    meta = {"a": ("tops", "red"), "b": ("tops", "blue"), "c": ("shoes", "red"), "d": ("bags", "")}
    written = await store.upsert(SPACE, [ProductVector(p, np.array(v, F32), *meta[p]) for p, v in vectors.items()])
    assert written == 4 and await store.count(SPACE) == 4
    query = np.array([[0.1, 0.2, 0.3], [1.0, 0.0, 0.0]], F32)
    hits = await store.search(SPACE, query, 2)
    assert [[h.product_id for h in row] for row in hits] == [["c", "d"], ["a", "d"]]
    assert hits[0][0].score == pytest.approx(0.9) and hits[0][0].category == "shoes"
    only = await store.search(SPACE, query[0], 5, categories=["tops"], exclude_ids=["b"])
    assert [h.product_id for h in only[0]] == ["a"]
    red = await store.search(SPACE, query[0], 5, colours=["red"])
    assert [h.product_id for h in red[0]] == ["c", "a"]
    assert await store.per_category(SPACE) == {"bags": 1, "shoes": 1, "tops": 2}
    assert await store.versions("item_encoder") == ["1"] and await store.dim("item_encoder", "1") == 3
    assert set(await store.get(SPACE, ["a", "zz"])) == {"a"}
    assert await store.delete(SPACE, ["a", "zz"]) == (1, ["zz"])
    with pytest.raises(InvalidInput):
        await store.upsert(SPACE, [ProductVector("e", np.array([np.nan, 0, 0], F32))])
    with pytest.raises(InvalidInput):
        await store.search(SPACE, np.ones(4), 1)
    with pytest.raises(InvalidInput):
        await store.search(SPACE, np.ones(3), 1, categories="tops")  # the real filter validation
    with pytest.raises(PreconditionFailed, match="4-d"):
        await store.ensure(EmbeddingSpace("item_encoder", "1", 4))
    with pytest.raises(PreconditionFailed, match="metric"):
        await store.ensure(EmbeddingSpace("item_encoder", "1", 3, metric="L2"))
    store.unavailable = True
    with pytest.raises(DependencyUnavailable):
        await store.ping()
    assert store.calls["search"] == 6


def test_every_test_over_the_trained_models_is_marked_integration(request: pytest.FixtureRequest) -> None:
    """The plugin's hook marks them, so `-m "not integration"` (make test-fast) never trains."""
    over_models = [item for item in request.session.items if "trained_models" in getattr(item, "fixturenames", ())]
    unmarked = [item.nodeid for item in over_models if item.get_closest_marker("integration") is None]
    assert unmarked == []
    if request.config.getoption("markexpr") == "not slow and not integration":
        assert over_models == []
