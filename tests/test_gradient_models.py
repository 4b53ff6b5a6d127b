"""Gradient models pref_grad / inv_grad / shift_grad: export, dynamic axes, float64 parity, properties.

Small couturier networks at 32x32 (the GAN and DVBPR classes accept 32 or 64 px) with narrow widths.
Weights are re-initialised with a non-trivial spread: at DCGAN init (N(0, 0.02)) the generator is
almost constant in z and the gradient is ill-conditioned even for float32 torch autograd (~1e-2
relative to float64), which would test the weights rather than the export. The check reports that
float32-torch floor (``torch_float32_*``) next to the ONNX errors for this reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from torch import nn  # noqa: E402

from couturier.export.grad_export import export_value_and_grad, value_and_grad  # noqa: E402
from couturier.export.gradient_models import (  # noqa: E402
    IO,
    check_gradient_models,
    example_inputs,
    export_gradient_models,
    read_metadata,
)
from couturier.export.models.dvbpr import DvbprConfig, ItemEncoder  # noqa: E402
from couturier.export.models.gan import Discriminator, GanConfig, Generator, upsample2x  # noqa: E402
from couturier.export.models.perceptual import PerceptualDistance  # noqa: E402
from couturier.export.objectives import (  # noqa: E402
    InversionObjective,
    PreferenceObjective,
    ShiftObjective,
    diversity_penalty,
    sample_realism_margin,
)
from couturier.export.onnx_io import make_session, onnx_signature  # noqa: E402
from couturier.services.common.model_metadata import decode_categories  # noqa: E402
from couturier.services.common.models import GRADIENT_MODELS  # noqa: E402

DZ, NCAT, K, S = 8, 3, 8, 32
#: The test generator's categories (a shop's own, not the simulated world's): every model carries them.
NAMES = ("boots", "sandals", "slippers")


def _init(m: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(mod.weight, 0.0, 0.25)
            if mod.bias is not None:
                nn.init.normal_(mod.bias, 0.0, 0.1)
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
            if mod.affine:  # the generator's conditional BatchNorm has its affine in Linear layers
                nn.init.uniform_(mod.weight, 0.5, 1.5)
                nn.init.normal_(mod.bias, 0.0, 0.1)
    return m.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    gc = GanConfig(image_size=S, z_dim=DZ, n_categories=NCAT, g_channels=(16, 8, 8), d_channels=(8, 8, 16))
    enc = _init(ItemEncoder(DvbprConfig(n_users=4, image_size=S, k=K, channels=(8, 8, 8), hidden=16)), 3)
    return {
        "generator": _init(Generator(gc), 1),
        "discriminator": _init(Discriminator(gc), 2),
        "encoder": enc,
        "perceptual": PerceptualDistance(enc),
    }


@pytest.fixture(scope="module")
def paths(nets: dict[str, nn.Module], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # A margin above every sample's realism keeps the one-sided penalty active (smooth) on all the
    # examples: these random-weight nets have huge D gradients, so a sample near the kink would test
    # float32 rounding of D rather than the export. The measured default: test_realism_margin_default.
    return export_gradient_models(
        **nets,
        out_dir=tmp_path_factory.mktemp("grad_models"),
        categories=NAMES,
        n_shifts_example=3,
        realism_margin=_ABOVE_ALL,
    )


#: Above the realism of every prior sample of the test discriminator (checked in test_files_signatures...).
_ABOVE_ALL = 1e4


@pytest.fixture(scope="module")
def sessions(paths: dict[str, Path]) -> dict[str, object]:
    return {name: make_session(p, threads=1) for name, p in paths.items()}


def _dims() -> dict[str, int]:
    return {"z_dim": DZ, "n_categories": NCAT, "k": K, "image_size": S, "channels": 3}


def _run(sess: object, name: str, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    ins, outs = IO[name]
    return dict(zip(outs, sess.run(list(outs), {k: inputs[k].numpy() for k in ins}), strict=True))


def _double(nets: dict[str, nn.Module]) -> dict[str, nn.Module]:
    import copy

    return {k: copy.deepcopy(v).double().eval() for k, v in nets.items()}


# --------------------------------------------------------------------------- files and signatures


@pytest.mark.integration
def test_files_signatures_and_metadata(paths: dict[str, Path], nets: dict[str, nn.Module]) -> None:
    assert set(paths) == set(GRADIENT_MODELS)
    for name, path in paths.items():
        assert path.name == f"{name}.onnx"
        model = onnx.load(path)
        onnx.checker.check_model(model)
        sig = onnx_signature(path)
        assert sig.opset >= 18
        assert tuple(sig.input_names) == IO[name][0] and tuple(sig.output_names) == IO[name][1]
        meta = read_metadata(path)
        assert meta["z_dim"] == str(DZ) and meta["image_size"] == str(S)
        assert decode_categories(meta["categories"]) == NAMES
    for name, path in paths.items():  # every tensor has the batch on axis 0: Triton serves them batched
        sig = onnx_signature(path)
        assert all(t.shape[0] == "batch" for t in (*sig.inputs, *sig.outputs)), (name, sig)
    ins = {t.name: t.shape for t in onnx_signature(paths["pref_grad"]).inputs}
    assert ins["theta"] == ("batch", K)
    assert {t.name: t.shape for t in onnx_signature(paths["pref_grad"]).outputs}["phi"] == ("batch", K)
    ins = {t.name: t.shape for t in onnx_signature(paths["shift_grad"]).inputs}
    assert ins["shifts"] == ("batch", "shifts", DZ) and ins["theta"] == ("batch", K)
    assert read_metadata(paths["inv_grad"])["perceptual_weight"] == "1.0"
    assert read_metadata(paths["shift_grad"])["diversity_space"] == "pixels"
    assert float(read_metadata(paths["shift_grad"])["diversity_sigma"]) == 0.01
    for name in ("pref_grad", "shift_grad"):
        assert float(read_metadata(paths[name])["realism_margin"]) == _ABOVE_ALL
    z = torch.rand(500, DZ, generator=torch.Generator().manual_seed(0)) * 2 - 1
    onehot = torch.eye(NCAT)[torch.arange(500) % NCAT]
    with torch.no_grad():
        assert nets["discriminator"](nets["generator"](z, onehot), onehot).max() < _ABOVE_ALL


@pytest.mark.integration
def test_gradients_are_deterministic_with_threads(paths: dict[str, Path]) -> None:
    """No scatter-add in any gradient graph: onnxruntime runs ScatterND(reduction=add) as a parallel
    read-modify-write, whose result changed between runs (a 15% Triton/onnxruntime gap in CI)."""
    for name, path in paths.items():
        ops = {node.op_type for node in onnx.load(path).graph.node}
        assert not ops & {"ScatterND", "ScatterElements"}, (name, ops & {"ScatterND", "ScatterElements"})
    inputs = example_inputs("shift_grad", _dims(), batch=6, n_users=3, n_shifts=5, seed=3)
    sess = make_session(paths["shift_grad"], threads=2)
    first = _run(sess, "shift_grad", inputs)["grad_shifts"]
    for _ in range(5):
        assert np.array_equal(_run(sess, "shift_grad", inputs)["grad_shifts"], first)


def test_the_category_names_must_match_the_generator(nets: dict[str, nn.Module], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 category names for a generator of 3 categories"):
        export_gradient_models(**nets, out_dir=tmp_path / "out", categories=NAMES[:2])
    assert not (tmp_path / "out").exists()


def test_generator_upsampling_equals_nearest_interpolation() -> None:
    x = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(upsample2x(x), torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


@pytest.mark.integration
def test_realism_margin_default_is_the_median_realism_of_samples(nets: dict[str, nn.Module], tmp_path: Path) -> None:
    paths = export_gradient_models(**nets, out_dir=tmp_path, categories=NAMES, models=("pref_grad",))
    margin = float(read_metadata(paths["pref_grad"])["realism_margin"])
    assert margin == pytest.approx(sample_realism_margin(nets["generator"], nets["discriminator"], NCAT, DZ))
    z = torch.rand(2000, DZ, generator=torch.Generator().manual_seed(1)) * 2 - 1
    onehot = torch.eye(NCAT)[torch.arange(2000) % NCAT]
    with torch.no_grad():
        below = (nets["discriminator"](nets["generator"](z, onehot), onehot) < margin).float().mean().item()
    assert 0.45 < below < 0.55  # about half of the generator's samples pay the penalty


@pytest.mark.integration
@pytest.mark.parametrize("batch", [2, 5])
@pytest.mark.parametrize("users", [1, 4])
def test_dynamic_batch_users_and_aux_shapes(sessions: dict[str, object], batch: int, users: int) -> None:
    out = _run(sessions["pref_grad"], "pref_grad", example_inputs("pref_grad", _dims(), batch=batch, n_users=users))
    assert out["value"].shape == (batch,) and out["grad_z"].shape == (batch, DZ)
    assert out["phi"].shape == (batch, K) and out["image"].shape == (batch, 3, S, S)
    assert out["realism"].shape == (batch,)
    assert np.abs(out["image"]).max() <= 1.0 + 1e-6  # tanh range, up to float32 rounding in onnxruntime
    for n in (1, 2, 5):
        out = _run(
            sessions["shift_grad"],
            "shift_grad",
            example_inputs("shift_grad", _dims(), batch=batch, n_users=users, n_shifts=n),
        )
        assert out["value"].shape == (batch,) and out["grad_shifts"].shape == (batch, n, DZ)
        assert out["images"].shape == (batch, n, 3, S, S) and out["pref"].shape == (batch, n)
        assert out["diversity"].shape == (batch,)
        if n == 1:
            assert np.all(out["diversity"] == 0.0)
    out = _run(sessions["inv_grad"], "inv_grad", example_inputs("inv_grad", _dims(), batch=batch))
    assert out["value"].shape == (batch,) and out["grad_z"].shape == (batch, DZ)
    assert out["image"].shape == (batch, 3, S, S) and np.all(out["value"] >= 0)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.integration
def test_float64_parity_report(nets: dict[str, nn.Module], paths: dict[str, Path]) -> None:
    report = check_gradient_models(**nets, paths=paths, batch=16, n_users=4, n_shifts=3, threads=1)
    for name in GRADIENT_MODELS:
        m = report["models"][name]
        assert m["grad_rel_err_median"] < 1e-5, (name, m)
        assert m["grad_rel_err_p99"] < 1e-3, (name, m)
        assert m["value_rel_err"] < 1e-5, (name, m)


@pytest.mark.integration
def test_finite_difference_one_sample(nets: dict[str, nn.Module], sessions: dict[str, object]) -> None:
    """The ONNX gradient agrees with float64 central differences of the torch objective."""
    n64 = _double(nets)
    cases = {
        "pref_grad": (
            PreferenceObjective(n64["generator"], n64["discriminator"], n64["encoder"], realism_margin=_ABOVE_ALL),
            "z",
            "grad_z",
        ),
        "inv_grad": (InversionObjective(n64["generator"], n64["perceptual"]), "z", "grad_z"),
        "shift_grad": (
            ShiftObjective(n64["generator"], n64["discriminator"], n64["encoder"], realism_margin=_ABOVE_ALL),
            "shifts",
            "grad_shifts",
        ),
    }
    g = torch.Generator().manual_seed(7)
    for name, (obj, wrt, gname) in cases.items():
        x = example_inputs(name, _dims(), batch=2, n_users=3, seed=11)
        grad = _run(sessions[name], name, x)[gname][0].astype(np.float64)
        x64 = {k: v[:1].double() for k, v in x.items()}
        ins = IO[name][0]
        d = torch.randn(x64[wrt].shape, generator=g, dtype=torch.float64)
        d = d / d.norm()
        h = 1e-6  # small: the nets are piecewise linear (ReLU, LeakyReLU, MaxPool kinks)

        def f(delta: torch.Tensor, obj: nn.Module = obj, wrt: str = wrt, ins: tuple = ins, x64: dict = x64) -> float:
            args = {**x64, wrt: x64[wrt] + delta}
            with torch.no_grad():
                return float(obj(*(args[k] for k in ins))[0][0])

        fd = (f(h * d) - f(-h * d)) / (2 * h)
        an = float((torch.as_tensor(grad) * d[0]).sum())
        assert abs(fd - an) <= 1e-4 * max(1.0, abs(an)), (name, fd, an)


# --------------------------------------------------------------------------- group objectives


@pytest.mark.integration
@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_rows_are_independent(sessions: dict[str, object], name: str) -> None:
    """What Triton's dynamic batcher relies on: a row's outputs do not depend on the other rows of the
    call, so merged requests get the answers they would get alone."""
    x = example_inputs(name, _dims(), batch=6, n_users=4, n_shifts=3, seed=13)
    together = _run(sessions[name], name, x)
    order = [4, 1, 5]
    apart = [
        _run(sessions[name], name, {k: v[order] for k, v in x.items()}),
        _run(sessions[name], name, {k: v[:1] for k, v in x.items()}),
    ]
    for out in IO[name][1]:
        scale = np.abs(together[out]).max()
        np.testing.assert_allclose(apart[0][out], together[out][order], rtol=1e-4, atol=1e-5 * scale, err_msg=out)
        np.testing.assert_allclose(apart[1][out], together[out][:1], rtol=1e-4, atol=1e-5 * scale, err_msg=out)


@pytest.mark.integration
def test_a_group_is_one_user_vector_per_row(sessions: dict[str, object]) -> None:
    """The score is linear in theta: the value with the group's mean vector is the mean of the per-user
    scores computed from ``phi`` (realism off), and ``phi`` does not depend on theta."""
    b, u = 5, 4
    x = example_inputs("pref_grad", _dims(), batch=b, n_users=u, seed=3)
    users = torch.randn(u, K, generator=torch.Generator().manual_seed(4)) / K**0.5
    off = torch.zeros(b, 1)
    group = _run(sessions["pref_grad"], "pref_grad", {**x, "theta": users.mean(0).expand(b, K), "realism_weight": off})
    other = _run(sessions["pref_grad"], "pref_grad", {**x, "theta": users[0].expand(b, K), "realism_weight": off})
    np.testing.assert_array_equal(group["phi"], other["phi"])
    scores = group["phi"].astype(np.float64) @ users.double().numpy().T  # (B,U), as the service computes them
    np.testing.assert_allclose(group["value"], scores.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(other["value"], scores[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_nonlinear_group_objective_by_chain_rule(
    nets: dict[str, nn.Module], sessions: dict[str, object], paths: dict[str, Path]
) -> None:
    """F = mean_u sigmoid((s_u - tau_u)/T) - realism: the row's vector sum_u dF/ds_u theta_u, with the
    per-user scores s computed from the ``phi`` output."""
    margin = float(read_metadata(paths["pref_grad"])["realism_margin"])
    b, u, temp = 4, 4, 2.0
    x = example_inputs("pref_grad", _dims(), batch=b, n_users=u, seed=5)
    users = torch.randn(u, K, generator=torch.Generator().manual_seed(6), dtype=torch.float64) / K**0.5
    first = _run(sessions["pref_grad"], "pref_grad", x)
    s = torch.as_tensor(first["phi"], dtype=torch.float64) @ users.t()
    tau = s.mean(0, keepdim=True)  # thresholds near the scores so the sigmoid is not saturated
    sig = torch.sigmoid((s - tau) / temp)
    w = sig * (1 - sig) / (temp * u)
    got = _run(sessions["pref_grad"], "pref_grad", {**x, "theta": (w @ users).float()})["grad_z"]

    n64 = _double(nets)

    def objective(z: torch.Tensor) -> torch.Tensor:
        img = n64["generator"](z, x["category"].double())
        scores = n64["encoder"](img) @ users.t()
        d = n64["discriminator"](img, x["category"].double())
        shortfall = torch.clamp(d - margin, max=0.0)  # the one-sided realism term, at the exported margin
        return torch.sigmoid((scores - tau) / temp).mean(1) - x["realism_weight"].double()[:, 0] * shortfall**2

    ref = value_and_grad(objective, 0)(x["z"].double())[1].numpy()
    rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert np.median(rel) < 1e-4, rel


# --------------------------------------------------------------------------- diversity


def test_diversity_penalty_values() -> None:
    f = torch.randn(2, 4, 5, dtype=torch.float64)
    same = f[:, :1].expand(2, 4, 5)
    assert torch.allclose(diversity_penalty(same, 0.5), torch.ones(2, dtype=torch.float64))
    assert torch.all(diversity_penalty(10 * f, 0.5) < 1e-3)
    assert torch.all(diversity_penalty(f[:, :1], 0.5) == 0)


@pytest.mark.integration
def test_shift_diversity_lower_for_spread_shifts(sessions: dict[str, object]) -> None:
    b, n = 3, 4
    x = example_inputs("shift_grad", _dims(), batch=b, n_users=2, n_shifts=n, seed=9)
    weights = x["weights"].clone()
    same = _run(sessions["shift_grad"], "shift_grad", {**x, "shifts": torch.zeros(b, n, DZ), "weights": weights})
    spread = 3.0 * torch.eye(DZ)[:n].expand(b, n, DZ).contiguous() * torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None]
    far = _run(sessions["shift_grad"], "shift_grad", {**x, "shifts": spread, "weights": weights})
    np.testing.assert_allclose(same["diversity"], 1.0, atol=1e-6)
    assert np.all(far["diversity"] < same["diversity"] - 0.05), far["diversity"]
    # with identical variants, the value is the preference of the base design minus the full penalty
    np.testing.assert_allclose(same["value"], same["pref"].mean(1) - weights[:, 0].numpy(), rtol=1e-5, atol=1e-4)
    # the diversity term's gradient pushes identical-but-perturbed shifts apart
    eps = 1e-2 * torch.randn(b, n, DZ, generator=torch.Generator().manual_seed(0))
    only_div = {
        **x,
        "shifts": eps,
        "weights": torch.tensor([[1.0, 0.0]]).expand(b, 2).contiguous(),
        "theta": torch.zeros(b, K),
    }
    out = _run(sessions["shift_grad"], "shift_grad", only_div)
    stepped = eps + 0.5 * torch.as_tensor(out["grad_shifts"])  # ascend value = -diversity
    step = _run(sessions["shift_grad"], "shift_grad", {**only_div, "shifts": stepped})
    assert np.all(step["diversity"] <= out["diversity"] + 1e-7)


# --------------------------------------------------------------------------- export helper


@pytest.mark.integration
def test_value_and_grad_aux_outputs(tmp_path: Path) -> None:
    def fn(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.tanh(x @ w)
        return (y**2).sum(1), y

    x, w = torch.randn(3, 4), torch.randn(4, 2)
    _value, grad, aux = value_and_grad(fn, 0)(x, w)
    assert aux.shape == (3, 2) and grad.shape == x.shape and not aux.requires_grad
    path = export_value_and_grad(
        fn,
        (x, w),
        tmp_path / "aux.onnx",
        wrt=0,
        input_names=["x", "w"],
        output_names=["value", "grad_x", "y"],
        dynamic_axes={"w": {}},
    )
    out = make_session(path).run(None, {"x": x.numpy(), "w": w.numpy()})
    np.testing.assert_allclose(out[2], aux.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[1], grad.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="output names"):
        export_value_and_grad(
            fn,
            (x, w),
            tmp_path / "bad.onnx",
            wrt=0,
            input_names=["x", "w"],
            output_names=["value", "grad_x"],
            dynamic_axes={"w": {}},
        )


@pytest.mark.integration
@pytest.mark.slow
def test_cost_measurement(nets: dict[str, nn.Module], paths: dict[str, Path]) -> None:
    report = check_gradient_models(
        **nets, paths=paths, batch=8, measure_cost=True, cost_batch=8, cost_repeats=10, threads=1
    )
    for name in GRADIENT_MODELS:
        m = report["models"][name]
        assert m["grad_ms"] > 0 and m["forward_ms"] > 0
        assert m["grad_over_forward"] < 10, m
