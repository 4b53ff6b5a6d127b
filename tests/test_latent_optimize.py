"""Latent optimisers (services/latent/optimize.py) over the REAL gradient models served in-process by
onnxruntime from the session's trained model repository; Adam and SSIM on their own."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import numpy as np
import pytest

from couturier.services.common.images import to_model_input
from couturier.services.common.inference import OnnxRuntimeBackend
from couturier.services.common.models import ITEM_ENCODER, PREF_GRAD, SHIFT_GRAD
from couturier.services.latent import optimize as opt
from couturier.services.latent.ssim import gaussian_window, ssim
from support.fakes import FakeInferenceBackend
from support.trained import TrainedModels

B = 4
N_USERS = 12
CATEGORY = 2  # "trousers" in the simulated world (the fake models' and the session's trained models' order)


# -- pure numpy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("maximise", [False, True])
def test_adam_converges_on_a_quadratic(maximise: bool) -> None:
    rng = np.random.default_rng(0)
    curvature, centre = rng.uniform(0.1, 10.0, 20), rng.normal(size=20)
    x, adam = np.zeros(20), opt.Adam(0.05, maximise=maximise)
    for _ in range(1000):
        grad = curvature * (x - centre)  # gradient of 0.5 * sum a (x - c)^2
        x = adam.step(x, -grad if maximise else grad)  # maximising -f == minimising f
    np.testing.assert_allclose(x, centre, atol=1e-3)
    assert adam.t == 1000
    with pytest.raises(ValueError, match="gradient shape"):
        adam.step(x, np.zeros(3))


def test_ssim_identity_symmetry_and_noise() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (2, 3, 32, 32))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), -1, 1)
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim(a, b), ssim(b, a), atol=1e-12)
    values = [ssim(a, np.clip(a + rng.normal(0, s, a.shape), -1, 1)) for s in (0.05, 0.2, 0.5)]
    assert np.all(values[0] < 1) and np.all(values[1] < values[0]) and np.all(values[2] < values[1])
    assert ssim(a, a[0]).shape == (2,)  # leading axes broadcast
    with pytest.raises(ValueError, match="smaller than"):
        ssim(a[..., :5, :5], a[..., :5, :5])
    with pytest.raises(ValueError, match="same"):
        ssim(a, a[..., :16])


def test_ssim_matches_the_reference_formula() -> None:
    # constant images: variances and covariance vanish -> (2 m n + C1) / (m^2 + n^2 + C1)
    c1 = (0.01 * 2.0) ** 2
    m, n = 0.3, -0.2
    expected = (2 * m * n + c1) / (m * m + n * n + c1)
    np.testing.assert_allclose(ssim(np.full((1, 8, 8), m), np.full((1, 8, 8), n)), expected, rtol=1e-9)
    # a small random pair against windows summed by hand (Wang et al. 2004, eq. 13, Gaussian weights)
    rng = np.random.default_rng(2)
    a, b = rng.uniform(-1, 1, (2, 1, 9, 10))
    w = np.outer(gaussian_window(), gaussian_window())
    c2 = (0.03 * 2.0) ** 2
    maps = []
    for i in range(9 - 6):
        for j in range(10 - 6):
            x, y = a[0, i : i + 7, j : j + 7], b[0, i : i + 7, j : j + 7]
            mx, my = (w * x).sum(), (w * y).sum()
            vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
            cxy = (w * (x - mx) * (y - my)).sum()
            maps.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    np.testing.assert_allclose(ssim(a, b), np.mean(maps), rtol=1e-9)


async def test_shape_mismatches_raise_before_any_call() -> None:
    z, cat, theta = np.zeros((2, 100)), np.zeros((3, 6)), np.zeros((4, 64))
    with pytest.raises(ValueError, match="category"):
        await opt.maximise_preference(None, z0=z, category=cat, theta=theta)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="thresholds"):
        await opt.maximise_preference(
            None,
            z0=z,
            category=cat[:2],
            theta=theta,
            objective="top_k_share",  # type: ignore[arg-type]
            thresholds=np.zeros(3),
        )
    with pytest.raises(ValueError, match="user_weight"):
        await opt.seller_shifts(None, base_z=z[0], category=cat[0], theta=theta, user_weight=np.ones(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        await opt.invert(None, target=np.zeros((2, 3, 32, 32)), category=cat[:1], z_dim=100)  # type: ignore[arg-type]


def test_one_tanh_adam_step_serves_ascent_and_descent() -> None:
    """The step shared by preference maximisation (ascent) and inversion (descent): Adam on w, z = tanh(w)."""
    rng = np.random.default_rng(5)
    z0 = rng.uniform(-0.9, 0.9, (3, 4))
    grad_z = rng.normal(size=(3, 4))
    for maximise in (True, False):
        adam, reference = opt.Adam(0.05, maximise=maximise), opt.Adam(0.05, maximise=maximise)
        w = opt._to_w(z0)
        new_w, new_z = opt._tanh_adam_step(adam, w, grad_z)
        expected_w = reference.step(w, grad_z * (1.0 - np.tanh(w) ** 2))  # chain rule through tanh
        np.testing.assert_allclose(new_w, expected_w)
        np.testing.assert_allclose(new_z, np.tanh(expected_w))
        assert np.all(np.sign(new_z - np.tanh(w)) == (1 if maximise else -1) * np.sign(grad_z))
        assert adam.t == 1


class _Recording(FakeInferenceBackend):
    """The fake backend, keeping every call's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, dict[str, np.ndarray]]] = []

    async def infer(self, model, inputs, outputs=None, version=""):  # type: ignore[no-untyped-def]
        self.sent.append((model, {k: np.array(v) for k, v in inputs.items()}))
        return await super().infer(model, inputs, outputs, version)


@pytest.mark.parametrize("objective", ["mean", "top_k_share"])
async def test_every_call_is_per_row_and_the_service_does_the_per_user_arithmetic(objective: str) -> None:
    """The gradient models take one user vector per row (the fake refuses inputs that disagree on dim 0,
    like Triton's batch axis): MEAN sends the group's mean vector, TOP_K_SHARE sum_u dF/ds_u theta_u at
    the previous call's per-user scores, which come from the ``phi`` output (phi @ theta_u)."""
    backend = _Recording()
    nets, dims = backend.nets("1"), backend.dims
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(5, dims.item_dim))
    z0, cat = opt.sample_prior(3, dims.z_dim, 1), opt.one_hot(1, dims.n_categories, 3)
    start = nets.item_encoder(nets.generator(z0, cat)) @ theta.T
    thresholds = np.median(start, axis=0) if objective == "top_k_share" else None
    res = await opt.maximise_preference(
        backend,
        z0=z0,
        category=cat,
        theta=theta,
        objective=objective,
        thresholds=thresholds,
        steps=4,  # type: ignore[arg-type]
    )
    phi = nets.item_encoder(nets.generator(res.z, cat))
    np.testing.assert_allclose(res.scores_after, phi @ theta.T, rtol=1e-4, atol=1e-5)
    calls = [inputs for model, inputs in backend.sent if model == PREF_GRAD]
    assert len(calls) == res.calls and all(c["theta"].shape == (3, dims.item_dim) for c in calls)
    if objective == "mean":
        for sent in calls:
            np.testing.assert_allclose(sent["theta"], np.repeat(theta.mean(0, keepdims=True), 3, 0), rtol=1e-6)
        return
    assert res.temperature is not None
    for before, sent in itertools.pairwise(calls[1:]):  # a step's weights: the previous call's scores
        scores = nets.item_encoder(nets.generator(before["z"], cat)) @ theta.T
        weight = opt._topk_terms(scores, thresholds, res.temperature)[2]  # type: ignore[arg-type]
        np.testing.assert_allclose(sent["theta"], weight @ theta, rtol=1e-4, atol=1e-6)


async def test_seller_shifts_send_the_audience_as_one_vector() -> None:
    backend = _Recording()
    dims = backend.dims
    theta = np.random.default_rng(2).normal(size=(4, dims.item_dim))
    weight = np.array([0.1, 0.2, 0.3, 0.4])
    res = await opt.seller_shifts(
        backend,
        base_z=np.zeros(dims.z_dim),
        category=opt.one_hot(1, dims.n_categories)[0],
        theta=theta,
        user_weight=weight,
        n=3,
        steps=2,
    )
    group = weight @ theta
    for model, sent in backend.sent:
        rows = len(sent["theta"])
        assert rows == (1 if model == SHIFT_GRAD else 4), model  # one request's n variants stay in one row
        np.testing.assert_allclose(sent["theta"], np.repeat(group[None], rows, 0), rtol=1e-6)
    nets = backend.nets("1")
    images = nets.generator(res.z, opt.one_hot(1, dims.n_categories, 3))
    np.testing.assert_allclose(res.preference_after, nets.item_encoder(images) @ group, rtol=1e-4, atol=1e-6)


async def test_select_starts_keeps_the_best_candidates_in_chunked_calls() -> None:
    """The picked starts are the candidates with the highest pref_grad value (mean preference minus the
    realism term) for the group's mean vector, best first, scored START_SCORING_ROWS rows per call."""
    backend = _Recording()
    nets, dims = backend.nets("1"), backend.dims
    theta = np.random.default_rng(4).normal(size=(3, dims.item_dim))
    m = opt.START_SCORING_ROWS + 6  # two calls
    candidates = opt.sample_prior(m, dims.z_dim, 9)
    cat = opt.one_hot(1, dims.n_categories)
    picked = await opt.select_starts(backend, candidates=candidates, category=cat, theta=theta, n=5, realism_weight=0.5)
    sent = np.repeat(theta.mean(0, keepdims=True), m, 0).astype(np.float32)
    value = nets.pref_grad(
        z=candidates, category=np.repeat(cat, m, 0), theta=sent, realism_weight=np.full((m, 1), 0.5, np.float32)
    )["value"].reshape(-1)
    np.testing.assert_array_equal(picked, candidates[np.argsort(-value, kind="stable")[:5]])
    assert [len(inputs["z"]) for model, inputs in backend.sent] == [opt.START_SCORING_ROWS, 6]
    with pytest.raises(ValueError, match="n must be between"):
        await opt.select_starts(backend, candidates=candidates, category=cat, theta=theta, n=m + 1)
    with pytest.raises(ValueError, match="category must be"):
        await opt.select_starts(backend, candidates=candidates, category=np.repeat(cat, 2, 0), theta=theta, n=2)


# -- over the served gradient models -------------------------------------------------------------


@pytest.fixture
async def backend(trained_models: TrainedModels) -> AsyncIterator[OnnxRuntimeBackend]:
    served = OnnxRuntimeBackend(trained_models.repo_dir)
    yield served
    await served.close()


@pytest.fixture(scope="module")
def theta(trained_models: TrainedModels) -> np.ndarray:
    return np.load(trained_models.user_vectors)["theta"][:N_USERS].astype(np.float32)


def _start(batch: int = B, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return opt.sample_prior(batch, 100, seed), opt.one_hot(CATEGORY, 6, batch)


@pytest.mark.slow
async def test_mean_preference_rises_and_stays_in_range(backend: OnnxRuntimeBackend, theta: np.ndarray) -> None:
    z0, cat = _start()
    seen: list[int] = []

    async def on_step(step: int, z: np.ndarray, objective: np.ndarray, image: np.ndarray) -> None:
        assert z.shape == (B, 100) and objective.shape == (B,) and image.shape == (B, 3, 32, 32)
        seen.append(step)

    res = await opt.maximise_preference(
        backend, z0=z0, category=cat, theta=theta, steps=15, realism_weight=0.0, on_step=on_step
    )
    assert seen == list(range(16)) and res.calls == 16 and res.history.shape == (16, B)
    assert np.all(res.objective_after > res.objective_before)
    np.testing.assert_allclose(res.objective_before, res.scores_before.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(res.objective_after, res.scores_after.mean(axis=1), rtol=1e-5)
    assert res.scores_after.shape == (B, N_USERS) and res.realism.shape == (B,)
    assert np.all(np.abs(res.z) < 1.0) and res.image.min() >= -1.0 and res.image.max() <= 1.0

    # with the realism term, the ascended value (preference - (D - 1)^2) rises for every design
    res = await opt.maximise_preference(backend, z0=z0, category=cat, theta=theta, steps=15)
    assert np.all(res.value_history[-1] > res.value_history[0])


@pytest.mark.slow
async def test_selected_starts_end_higher_than_unselected_ones(backend: OnnxRuntimeBackend, theta: np.ndarray) -> None:
    """Start selection is worth its call on the trained models: designs from the best of 16 prior samples
    end with a higher value than designs from the first samples of the same seed, for the same steps."""
    candidates, cat = _start(batch=B * 16, seed=11)
    picked = await opt.select_starts(backend, candidates=candidates, category=cat[:1], theta=theta, n=B)
    plain = await opt.maximise_preference(backend, z0=candidates[:B], category=cat[:B], theta=theta)
    chosen = await opt.maximise_preference(backend, z0=picked, category=cat[:B], theta=theta)
    assert chosen.value_history[0].mean() > plain.value_history[0].mean()
    assert chosen.value_history[-1].mean() > plain.value_history[-1].mean()


@pytest.mark.slow
async def test_mean_objective_of_a_group_equals_one_user_with_the_mean_theta(
    backend: OnnxRuntimeBackend, theta: np.ndarray
) -> None:
    z0, cat = _start(seed=5)
    group = await opt.maximise_preference(backend, z0=z0, category=cat, theta=theta, steps=8)
    single = await opt.maximise_preference(
        backend, z0=z0, category=cat, theta=theta.mean(axis=0, keepdims=True), steps=8
    )
    np.testing.assert_allclose(group.history, single.history, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(group.z, single.z, atol=1e-4)
    # scores are linear in theta: the mean of per-user scores is the mean-theta score
    np.testing.assert_allclose(group.scores_after.mean(axis=1), single.scores_after[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
async def test_top_k_share_raises_the_smooth_share(
    backend: OnnxRuntimeBackend, theta: np.ndarray, trained_models: TrainedModels
) -> None:
    from couturier.export.data.dataset import load_prepared

    images = load_prepared(trained_models.data_dir).catalogue.images
    phi = (await backend.infer(ITEM_ENCODER, {"image": to_model_input(list(images), 32)}))["embedding"]
    # each user's top-10% catalogue score: random starts enter it for some users, so the hard share can move
    thresholds = np.quantile(phi @ theta.T, 0.9, axis=0)
    z0, cat = _start(seed=7)
    res = await opt.maximise_preference(
        backend,
        z0=z0,
        category=cat,
        theta=theta,
        objective="top_k_share",
        thresholds=thresholds,
        steps=20,
        realism_weight=0.0,
    )
    assert res.calls == 22 and res.temperature is not None and np.all(res.temperature > 0)
    np.testing.assert_allclose(res.objective_before, (res.scores_before >= thresholds).mean(axis=1))
    np.testing.assert_allclose(res.objective_after, (res.scores_after >= thresholds).mean(axis=1))
    # the optimised surrogate rises for every design, and the hard share it stands for on average
    assert np.all(res.smooth_history[-1] > res.smooth_history[0])
    assert res.objective_after.mean() > res.objective_before.mean()


@pytest.mark.slow
async def test_inversion_reduces_the_loss_and_keeps_the_best(
    backend: OnnxRuntimeBackend, trained_models: TrainedModels
) -> None:
    from couturier.export.data.dataset import load_prepared

    target = to_model_input([load_prepared(trained_models.data_dir).catalogue.images[0]], 32)
    res = await opt.invert(backend, target=target, category=opt.one_hot(CATEGORY, 6), steps=60, restarts=3, seed=1)
    assert res.history.shape == (61, 3) and res.calls == 61
    assert np.all(res.history.min(axis=0) < res.history[0])  # every restart improves
    assert res.loss <= res.history[0].min() and res.loss == pytest.approx(res.history.min())
    assert res.history[res.best_step, res.best_restart] == pytest.approx(res.loss)
    assert res.z.shape == (1, 100) and np.all(np.abs(res.z) < 1.0) and res.image.shape == (1, 3, 32, 32)


@pytest.mark.slow
async def test_seller_shifts_stay_in_the_ball_and_raise_preference(
    backend: OnnxRuntimeBackend, theta: np.ndarray
) -> None:
    base = opt.sample_prior(1, 100, 11)[0] * 0.95
    # Realism off: with it on, the objective is preference - realism penalty, and on the tiny test
    # models (preferences ~1e-3) the penalty dominates, so the objective can rise while preference falls.
    common = dict(
        base_z=base,
        category=opt.one_hot(CATEGORY, 6)[0],
        theta=theta,
        user_weight=np.full(N_USERS, 1 / N_USERS),
        n=5,
        radius=0.8,
        steps=20,
        seed=4,
        realism_weight=0.0,
    )
    plain = await opt.seller_shifts(backend, diversity_weight=0.0, **common)
    diverse = await opt.seller_shifts(backend, diversity_weight=10.0, **common)
    for res in (plain, diverse):
        assert res.image.shape == (5, 3, 32, 32) and res.calls == 21 and res.history.shape == (20,)
        assert np.all(res.shift_norm <= 0.8 + 1e-5)
        assert np.all(np.abs(res.z) <= 1.0)
        np.testing.assert_allclose(res.z - base, res.shifts, atol=1e-6)
        np.testing.assert_allclose(res.preference_shift, res.preference_after - res.preference_before, atol=1e-6)
        np.testing.assert_allclose(res.opposite_ssim, 1.0 - ssim(res.image, res.base_image), atol=1e-9)
    assert plain.preference_after.mean() > plain.preference_before
    assert plain.history[-1] > plain.history[0]
    # The diversity term (an RBF repulsion between the variants' 8x8-pooled pixels, sigma 0.01) spreads
    # the variants apart: both the closest pair and the mean nearest distance grow.
    assert diverse.nearest_distance.mean() > plain.nearest_distance.mean()
    assert diverse.min_pairwise_distance > plain.min_pairwise_distance


async def test_the_shift_step_scales_with_the_radius() -> None:
    """With the default rate, one Adam step moves a GIGS shift by the same share of its ball whatever the
    radius (a fixed rate would move a small ball's shifts 4x further, relative to the radius, than a large one's)."""
    backend = FakeInferenceBackend()
    dims = backend.dims
    base = np.zeros(dims.z_dim)
    common = dict(
        base_z=base,
        category=opt.one_hot(1, dims.n_categories)[0],
        theta=np.random.default_rng(0).normal(size=(3, dims.item_dim)),
        user_weight=np.full(3, 1 / 3),
        n=2,
        diversity_weight=0.0,
        realism_weight=0.0,
        seed=7,
    )
    moved = {}
    for radius in (0.25, 1.0):
        start = await opt.seller_shifts(backend, radius=radius, steps=0, **common)
        after = await opt.seller_shifts(backend, radius=radius, steps=1, **common)
        moved[radius] = float(np.linalg.norm(after.shifts - start.shifts, axis=1).mean()) / radius
    assert moved[0.25] > 0
    np.testing.assert_allclose(moved[0.25], moved[1.0], rtol=0.05)
    assert opt.default_shift_learning_rate(opt.DEFAULT_SHIFT_RADIUS) == pytest.approx(0.006 * opt.DEFAULT_SHIFT_RADIUS)
