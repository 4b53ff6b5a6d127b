"""ONNX export of forward and value-and-gradient models (small stand-ins for couturier's networks).

Gradient models are checked per sample against float64 torch autograd. A float32 model evaluated
near a ReLU kink (a pre-activation within float32 rounding of 0) can take the other side of the
kink than the float64 reference and so get a legitimately different gradient for that sample;
such samples are rare, so the check is statistical: median relative error < 1e-5 and 99% of the
samples < 1e-3 (the float32 model is exact up to rounding everywhere else, ~1e-7).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from couturier.export import grad_decompositions as gd  # noqa: E402
from couturier.export.grad_export import (  # noqa: E402
    export_value_and_grad,
    per_sample_relative_error,
    value_and_grad,
)
from couturier.export.onnx_io import (  # noqa: E402
    OnnxExportError,
    check_parity,
    export_forward,
    finalize_onnx,
    make_session,
    onnx_signature,
    run_onnx,
)

DZ, NCAT, K, RES = 12, 3, 8, 16


# --------------------------------------------------------------------------- toy networks


class Generator(nn.Module):
    """Conditional DCGAN-style G(z, one-hot category) -> (B, 3, 16, 16) in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(DZ + NCAT, 32 * 4 * 4)
        self.net = nn.Sequential(
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 4, 2, 1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 3, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(torch.cat([z, cat], 1)).view(-1, 32, 4, 4))


class Encoder(nn.Module):
    """DVBPR-style item encoder Phi: Conv + ReLU + MaxPool + adaptive avg pool + Linear -> (B, K)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, 2, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(3),
            nn.Flatten(),
            nn.Linear(16 * 9, K),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Discriminator(nn.Module):
    """Conv + LeakyReLU + BatchNorm(eval) + AvgPool -> one realism logit per image, shape (B,)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(8, 16, 4, 2, 1),
            nn.BatchNorm2d(16),
            nn.LeakyReLU(0.2),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 2 * 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


class Perceptual(nn.Module):
    """Feature net for a perceptual distance: two feature maps, strided conv and avg pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU())
        self.b = nn.Sequential(nn.AvgPool2d(3, 2, 1, count_include_pad=False), nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        fa = self.a(x)
        return [fa, self.b(fa)]


def _init(m: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(mod.weight, 0.0, 0.3)
            nn.init.normal_(mod.bias, 0.0, 0.1)
        if isinstance(mod, nn.BatchNorm2d):  # non-trivial eval statistics
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.normal_(mod.bias, 0.0, 0.1)
    return m.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    return {
        "G": _init(Generator(), 1),
        "Phi": _init(Encoder(), 2),
        "D": _init(Discriminator(), 3),
        "P": _init(Perceptual(), 4),
    }


def _double(nets: dict[str, nn.Module]) -> dict[str, nn.Module]:
    return {k: copy.deepcopy(v).double() for k, v in nets.items()}


# --------------------------------------------------------------------------- objectives


def make_pref(n: dict[str, nn.Module]) -> Callable[..., torch.Tensor]:
    """pref(z, cat, theta[U,K], w) = mean_u theta_u . Phi(G(z,cat)) - w (D(G(z,cat)) - 1)^2, shape (B,)."""

    def pref(z: torch.Tensor, cat: torch.Tensor, theta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = n["G"](z, cat)
        return (n["Phi"](x) @ theta.t()).mean(1) - w.reshape(-1) * (n["D"](x) - 1.0) ** 2

    return pref


def make_inversion(n: dict[str, nn.Module]) -> Callable[..., torch.Tensor]:
    """loss(z, cat, target) = per-sample MSE(G(z), target) + perceptual distance, shape (B,)."""

    def loss(z: torch.Tensor, cat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = n["G"](z, cat)
        value = F.mse_loss(x, target, reduction="none").flatten(1).mean(1)
        for fx, ft in zip(n["P"](x), n["P"](target), strict=True):
            value = value + (fx - ft).pow(2).flatten(1).mean(1)
        return value

    return loss


def make_gigs(n: dict[str, nn.Module]) -> Callable[..., torch.Tensor]:
    """GIGS shift objective over n shifts (B, n, Dz) around z0 (B, Dz); returns (B, n) so that the
    gradient of the sum is the per-sample gradient w.r.t. all shifts. Diversity: mean pairwise
    distance between the shifts of a sample, weighted by lam (B, 1)."""

    def gigs(
        shifts: torch.Tensor, z0: torch.Tensor, cat: torch.Tensor, theta: torch.Tensor, lam: torch.Tensor
    ) -> torch.Tensor:
        b, ns, dz = shifts.shape
        z = (z0.unsqueeze(1) + shifts).reshape(-1, dz)
        c = cat.unsqueeze(1).expand(b, ns, cat.shape[1]).reshape(-1, cat.shape[1])
        pref = (n["Phi"](n["G"](z, c)) @ theta.t()).mean(1).reshape(b, ns)
        diff = shifts.unsqueeze(1) - shifts.unsqueeze(2)  # (B, n, n, Dz)
        div = (diff.pow(2).sum(-1) + 1e-6).sqrt().mean(-1)  # (B, n)
        return pref + lam * div

    return gigs


def _onehot(b: int, gen: torch.Generator) -> torch.Tensor:
    return torch.eye(NCAT)[torch.randint(0, NCAT, (b,), generator=gen)]


def _pref_inputs(b: int, users: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "z": torch.randn(b, DZ, generator=g),
        "cat": _onehot(b, g),
        "theta": torch.randn(users, K, generator=g),
        "w": torch.full((1,), 0.7),
    }


def _inv_inputs(b: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "z": torch.randn(b, DZ, generator=g),
        "cat": _onehot(b, g),
        "target": torch.rand(b, 3, RES, RES, generator=g) * 2 - 1,
    }


def _gigs_inputs(b: int, users: int, seed: int, ns: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "shifts": 0.3 * torch.randn(b, ns, DZ, generator=g),
        "z0": torch.randn(b, DZ, generator=g),
        "cat": _onehot(b, g),
        "theta": torch.randn(users, K, generator=g),
        "lam": torch.rand(b, 1, generator=g),
    }


# --------------------------------------------------------------------------- checks


def _check_file(path: Path, inputs: list[str], outputs: list[str]) -> None:
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    sig = onnx_signature(path)
    assert sig.opset >= 18
    assert sig.input_names == inputs and sig.output_names == outputs
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert not path.with_suffix(".onnx.data").exists()
    # every forward output carries the batch axis symbolically
    assert all(isinstance(o.shape[0], str) for o in sig.outputs), sig.outputs


def _check_grads(
    path: Path,
    fn64: Callable[..., torch.Tensor],
    wrt: tuple[int, ...],
    inputs: dict[str, torch.Tensor],
    sess: object | None = None,
) -> np.ndarray:
    """Run the ONNX gradient model, compare with float64 autograd; returns per-sample grad rel errs."""
    out = run_onnx(sess or make_session(path), inputs)
    names = onnx_signature(path).output_names
    ref = value_and_grad(fn64, wrt)(*(t.double() for t in inputs.values()))
    v, r = out[names[0]].astype(np.float64), ref[0].numpy()
    assert v.shape == r.shape
    assert np.all(np.abs(v - r) <= 1e-4 * (1.0 + np.abs(r))), np.abs(v - r).max()
    errs = []
    for name, rg in zip(names[1:], ref[1:], strict=True):
        assert out[name].shape == tuple(rg.shape)
        errs.append(per_sample_relative_error(out[name], rg))
    return np.max(np.stack(errs), axis=0)


def _assert_grad_stats(errs: np.ndarray) -> None:
    assert np.median(errs) < 1e-5, np.median(errs)
    assert np.mean(errs < 1e-3) >= 0.99, np.sort(errs)[-5:]


# --------------------------------------------------------------------------- forward models


@pytest.fixture(scope="module")
def forward_models(nets: dict[str, nn.Module], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fwd")
    ex = _inv_inputs(2, 0)
    img = torch.rand(2, 3, RES, RES)
    return {
        "G": export_forward(
            nets["G"], (ex["z"], ex["cat"]), d / "g.onnx", input_names=["z", "cat"], output_names=["image"]
        ),
        "Phi": export_forward(nets["Phi"], (img,), d / "phi.onnx", input_names=["image"], output_names=["embedding"]),
        "D": export_forward(nets["D"], (img,), d / "d.onnx", input_names=["image"], output_names=["logit"]),
    }


@pytest.mark.integration
def test_forward_exports_dynamic_batch_and_parity(nets: dict[str, nn.Module], forward_models: dict[str, Path]) -> None:
    _check_file(forward_models["G"], ["z", "cat"], ["image"])
    _check_file(forward_models["Phi"], ["image"], ["embedding"])
    _check_file(forward_models["D"], ["image"], ["logit"])
    for b in (1, 3, 7):
        ex = _inv_inputs(b, b)
        rep = check_parity(nets["G"], forward_models["G"], {"z": ex["z"], "cat": ex["cat"]}, rtol=1e-4, atol=1e-5)
        assert rep.ok, rep
        for key, out in (("Phi", "embedding"), ("D", "logit")):
            rep = check_parity(nets[key], forward_models[key], {"image": ex["target"]}, rtol=1e-4, atol=1e-5)
            assert rep.ok, rep
            assert run_onnx(forward_models[key], {"image": ex["target"]})[out].shape[0] == b


@pytest.mark.integration
def test_forward_with_users_axis(nets: dict[str, nn.Module], tmp_path: Path) -> None:
    class Pref(nn.Module):
        def forward(self, z, cat, theta, w):
            return make_pref(nets)(z, cat, theta, w)

    ex = _pref_inputs(2, 3, 0)
    path = export_forward(
        Pref(),
        tuple(ex.values()),
        tmp_path / "pref.onnx",
        input_names=list(ex),
        output_names=["value"],
        dynamic_axes={"theta": {0: "users"}, "w": {}},
    )
    sig = onnx_signature(path)
    assert sig.inputs[2].shape[0] == "users" and sig.inputs[3].shape == (1,)
    for b, u in ((1, 2), (3, 5), (7, 1)):
        rep = check_parity(Pref(), path, _pref_inputs(b, u, b + u), rtol=1e-4, atol=1e-5)
        assert rep.ok, rep


# --------------------------------------------------------------------------- gradient models


@pytest.mark.integration
def test_preference_gradient(nets: dict[str, nn.Module], tmp_path: Path) -> None:
    ex = _pref_inputs(2, 3, 0)
    path = export_value_and_grad(
        make_pref(nets),
        tuple(ex.values()),
        tmp_path / "pref_grad.onnx",
        wrt=0,
        input_names=list(ex),
        output_names=["value", "grad_z"],
        dynamic_axes={"theta": {0: "users"}, "w": {}},
    )
    _check_file(path, list(ex), ["value", "grad_z"])
    sig = onnx_signature(path)
    assert sig.inputs[2].shape == ("users", K) and sig.outputs[1].shape[1:] == (DZ,)
    fn64, sess = make_pref(_double(nets)), make_session(path)
    errs = [
        _check_grads(path, fn64, (0,), _pref_inputs(b, u, 10 * b + u), sess)
        for b, u in itertools.product((1, 3, 7), (2, 5))
    ]
    errs.append(_check_grads(path, fn64, (0,), _pref_inputs(128, 4, 99), sess))
    _assert_grad_stats(np.concatenate(errs))
    # float32 torch agrees with the float32 ONNX value and gradient tightly too
    rep = check_parity(value_and_grad(make_pref(nets), 0), path, _pref_inputs(7, 3, 5), rtol=1e-3, atol=1e-5)
    assert rep.ok, rep


@pytest.mark.integration
def test_inversion_gradient_multi_wrt(nets: dict[str, nn.Module], tmp_path: Path) -> None:
    ex = _inv_inputs(2, 0)
    path = export_value_and_grad(
        make_inversion(nets),
        tuple(ex.values()),
        tmp_path / "inv_grad.onnx",
        wrt=(0, 2),
        input_names=list(ex),
        output_names=["loss", "grad_z", "grad_target"],
    )
    _check_file(path, list(ex), ["loss", "grad_z", "grad_target"])
    fn64, sess = make_inversion(_double(nets)), make_session(path)
    errs = [_check_grads(path, fn64, (0, 2), _inv_inputs(b, b), sess) for b in (1, 3, 7, 64)]
    _assert_grad_stats(np.concatenate(errs))


@pytest.mark.integration
def test_gigs_shift_gradient_3d(nets: dict[str, nn.Module], tmp_path: Path) -> None:
    ex = _gigs_inputs(2, 3, 0)
    path = export_value_and_grad(
        make_gigs(nets),
        tuple(ex.values()),
        tmp_path / "gigs_grad.onnx",
        wrt=0,
        input_names=list(ex),
        output_names=["value", "grad_shifts"],
        dynamic_axes={"theta": {0: "users"}},
    )
    _check_file(path, list(ex), ["value", "grad_shifts"])
    sig = onnx_signature(path)
    assert sig.inputs[0].shape == ("batch", 4, DZ) and sig.inputs[4].shape == ("batch", 1)
    fn64, sess = make_gigs(_double(nets)), make_session(path)
    errs = [
        _check_grads(path, fn64, (0,), _gigs_inputs(b, u, b + u), sess) for b, u in ((1, 2), (3, 6), (7, 1), (32, 3))
    ]
    _assert_grad_stats(np.concatenate(errs))


@pytest.mark.integration
@pytest.mark.slow
def test_grad_cost_vs_forward(nets: dict[str, nn.Module], tmp_path: Path) -> None:
    """Reports (prints) the gradient/forward call-cost ratio in onnxruntime; no timing assertion."""

    class Pref(nn.Module):
        def forward(self, z, cat, theta, w):
            return make_pref(nets)(z, cat, theta, w)

    ex = _pref_inputs(2, 3, 0)
    kw = {"input_names": list(ex), "dynamic_axes": {"theta": {0: "users"}, "w": {}}}
    fwd = export_forward(Pref(), tuple(ex.values()), tmp_path / "f.onnx", output_names=["value"], **kw)
    grd = export_value_and_grad(
        make_pref(nets), tuple(ex.values()), tmp_path / "g.onnx", wrt=0, output_names=["value", "grad_z"], **kw
    )
    sessions = [make_session(fwd, threads=1), make_session(grd, threads=1)]
    for b in (1, 64):
        feeds = {k: v.numpy() for k, v in _pref_inputs(b, 4, 1).items()}
        best = [float("inf")] * 2
        for _ in range(3):
            for i, s in enumerate(sessions):
                s.run(None, feeds)
                t = time.perf_counter()
                for _ in range(20):
                    s.run(None, feeds)
                best[i] = min(best[i], (time.perf_counter() - t) / 20)
        print(
            f"batch {b}: forward {best[0] * 1e3:.3f} ms, value+grad {best[1] * 1e3:.3f} ms, "
            f"ratio {best[1] / best[0]:.2f}"
        )


# --------------------------------------------------------------------------- decompositions, errors


@pytest.mark.parametrize("transposed", [False, True])
def test_convolution_backward_decomposition(transposed: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    for s, p, d, g, k, op in itertools.product((1, 2, 3), (0, 1), (1, 2), (1, 2), (1, 3, 4), (0, 1)):
        if op and (not transposed or op >= max(s, d)):
            continue
        x = torch.randn(2, 4, 7, 8, dtype=torch.float64, generator=gen, requires_grad=True)
        shape = (4, 6 // g, k, k) if transposed else (6, 4 // g, k, k)
        w = torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
        b = torch.randn(6, dtype=torch.float64, generator=gen, requires_grad=True)
        try:
            y = torch.ops.aten.convolution(x, w, b, [s, s], [p, p], [d, d], transposed, [op, op], g)
        except RuntimeError:  # output would be empty
            continue
        gy = torch.randn(y.shape, dtype=torch.float64, generator=gen)
        ref = torch.autograd.grad(y, (x, w, b), gy)
        got = gd.convolution_backward(
            gy, x.detach(), w.detach(), [6], [s, s], [p, p], [d, d], transposed, [op, op], g, [True, True, True]
        )
        for a, r in zip(got, ref, strict=True):
            assert a is not None and a.shape == r.shape and torch.allclose(a, r, atol=1e-10), (s, p, d, g, k, op)


def test_pooling_backward_decompositions() -> None:
    gen = torch.Generator().manual_seed(0)
    for k, s, p, cm, cip, dov, h in itertools.product(
        (2, 3), (None, 2), (0, 1), (False, True), (False, True), (None, 3), (6, 7)
    ):
        x = torch.randn(2, 3, h, h + 1, dtype=torch.float64, generator=gen, requires_grad=True)
        y = F.avg_pool2d(x, k, s, p, cm, cip, dov)
        gy = torch.randn(y.shape, dtype=torch.float64, generator=gen)
        (r,) = torch.autograd.grad(y, x, gy)
        a = gd.avg_pool2d_backward(gy, x.detach(), [k, k], [] if s is None else [s, s], [p, p], cm, cip, dov)
        assert torch.allclose(a, r, atol=1e-12), (k, s, p, cm, cip, dov, h)
        y, idx = torch.ops.aten.max_pool2d_with_indices(x, [k, k], [] if s is None else [s, s], [p, p], [1, 1], cm)
        gy = torch.randn(y.shape, dtype=torch.float64, generator=gen)
        (r,) = torch.autograd.grad(y, x, gy)
        a = gd.max_pool2d_with_indices_backward(
            gy, x.detach(), [k, k], [] if s is None else [s, s], [p, p], [1, 1], cm, idx
        )
        assert torch.allclose(a, r, atol=1e-12), ("max", k, s, p, cm, h)
    for h, o in ((7, 3), (8, 4), (5, 1), (6, 5), (4, 7)):
        x = torch.randn(2, 3, h, h + 1, dtype=torch.float64, generator=gen, requires_grad=True)
        y = F.adaptive_avg_pool2d(x, (o, o + 1))
        gy = torch.randn(y.shape, dtype=torch.float64, generator=gen)
        (r,) = torch.autograd.grad(y, x, gy)
        assert torch.allclose(gd.adaptive_avg_pool2d_backward(gy, x.detach()), r, atol=1e-12), (h, o)


def test_low_opset_and_bad_examples_fail_clearly(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    vi = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["batch", 2]) for n in "xy"]
    model = onnx.helper.make_model(
        onnx.helper.make_graph([node], "g", vi[:1], vi[1:]), opset_imports=[onnx.helper.make_opsetid("", 17)]
    )
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(OnnxExportError, match="opset"):
        finalize_onnx(tmp_path / "m.onnx", opset=18, input_names=["x"], output_names=["y"])
    with pytest.raises(ValueError, match=">= 2"):
        export_forward(
            nn.Linear(2, 2), (torch.randn(1, 2),), tmp_path / "l.onnx", input_names=["x"], output_names=["y"]
        )
