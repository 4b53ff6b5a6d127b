"""Tiny ONNX models for the Triton and model-repository tests, built with onnx.helper (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def linear_weights(seed: int, n_in: int = 8, n_out: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_in, n_out)).astype(np.float32), rng.normal(size=n_out).astype(np.float32)


def linear_model(path: Path, seed: int = 0, n_in: int = 8, n_out: int = 4, batch: str | int = "batch") -> Path:
    """y = x @ W + b, x: [batch, n_in] float32."""
    w, b = linear_weights(seed, n_in, n_out)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n_out])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    return _save(graph, path)


def two_output_model(path: Path, seed: int = 1) -> Path:
    """score = w * sum(img * theta, axis=(1,2)) (float32 [batch], w: [batch]);
    ids = argmax over a [batch, 5] int64 projection."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(3, 6)).astype(np.float32)
    proj = rng.normal(size=(6, 5)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["img", "theta"], ["weighted"]),
            helper.make_node("ReduceSum", ["weighted", "axes"], ["raw_score"], keepdims=0),
            helper.make_node("Mul", ["raw_score", "w"], ["score"]),
            helper.make_node("Sum", ["img"], ["img_copy"]),
            helper.make_node("ReduceSum", ["img_copy", "axis1"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "proj"], ["logits"]),
            helper.make_node("ArgMax", ["logits"], ["ids"], axis=1, keepdims=0),
        ],
        "two_outputs",
        [
            helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 3, 6]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, ["n"]),
        ],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
        ],
        [
            numpy_helper.from_array(theta, "theta"),
            numpy_helper.from_array(proj, "proj"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ],
    )
    return _save(graph, path)


def user_weights(seed: int = 5, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(dim,)).astype(np.float32)


def users_model(path: Path, dim: int = 4, seed: int = 5) -> Path:
    """Inputs that do NOT share dim 0 (served unbatched): z [batch, dim], theta [users, dim] float32.

    out = z @ theta^T ([batch, users]); value = (z * scale).sum(1) ([batch]).
    """
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["theta"], ["theta_t"], perm=[1, 0]),
            helper.make_node("MatMul", ["z", "theta_t"], ["out"]),
            helper.make_node("Mul", ["z", "scale"], ["scaled"]),
            helper.make_node("ReduceSum", ["scaled", "axis1"], ["value"], keepdims=0),
        ],
        "users",
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", dim]),
            helper.make_tensor_value_info("theta", TensorProto.FLOAT, ["users", dim]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "users"]),
            helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch"]),
        ],
        [
            numpy_helper.from_array(user_weights(seed, dim), "scale"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ],
    )
    return _save(graph, path)


def pref_grad_model(
    path: Path,
    categories: tuple[str, ...] | None,
    *,
    z_dim: int = 4,
    k: int = 6,
    size: int = 4,
    seed: int = 11,
) -> Path:
    """A stand-in with ``pref_grad``'s signature over a linear-tanh generator, carrying ``categories``
    as its ONNX metadata (``couturier.categories``; None: a model exported without them).

    ``x = tanh(z A + category B)``, ``image = x`` as (3, size, size), ``phi = x W``,
    ``value = theta_b . phi_b`` (one user vector per row; no realism term: ``realism_weight`` is taken
    and ignored), ``grad_z`` its exact gradient, ``realism = x . d``. Every tensor is batched (dim 0).
    """
    pixels, n_cat = 3 * size * size, len(categories or ("a", "b", "c"))
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1 / np.sqrt(z_dim), (z_dim, pixels)).astype(np.float32)
    b = rng.normal(0, 0.5, (n_cat, pixels)).astype(np.float32)
    w = rng.normal(0, 1 / np.sqrt(pixels), (pixels, k)).astype(np.float32)
    d = rng.normal(0, 1 / np.sqrt(pixels), pixels).astype(np.float32)
    node = helper.make_node
    graph = helper.make_graph(
        [
            node("MatMul", ["z", "A"], ["za"]),
            node("MatMul", ["category", "B"], ["cb"]),
            node("Add", ["za", "cb"], ["h"]),
            node("Tanh", ["h"], ["x"]),
            node("Reshape", ["x", "image_shape"], ["image"]),
            node("MatMul", ["x", "W"], ["phi"]),
            node("Mul", ["phi", "theta"], ["weighted"]),
            node("ReduceSum", ["weighted", "axis1"], ["value"], keepdims=0),
            node("Mul", ["x", "d"], ["xd"]),
            node("ReduceSum", ["xd", "axis1"], ["realism"], keepdims=0),
            # grad_z = ((theta W^T) * (1 - x^2)) A^T
            node("MatMul", ["theta", "W_t"], ["grad_x"]),
            node("Mul", ["x", "x"], ["x2"]),
            node("Sub", ["one", "x2"], ["dtanh"]),
            node("Mul", ["grad_x", "dtanh"], ["grad_h"]),
            node("MatMul", ["grad_h", "A_t"], ["grad_z"]),
        ],
        "pref_grad_stub",
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", z_dim]),
            helper.make_tensor_value_info("category", TensorProto.FLOAT, ["batch", n_cat]),
            helper.make_tensor_value_info("theta", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("realism_weight", TensorProto.FLOAT, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("grad_z", TensorProto.FLOAT, ["batch", z_dim]),
            helper.make_tensor_value_info("phi", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size]),
            helper.make_tensor_value_info("realism", TensorProto.FLOAT, ["batch"]),
        ],
        [
            numpy_helper.from_array(a, "A"),
            numpy_helper.from_array(np.ascontiguousarray(a.T), "A_t"),
            numpy_helper.from_array(b, "B"),
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.ascontiguousarray(w.T), "W_t"),
            numpy_helper.from_array(d, "d"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([-1, 3, size, size], np.int64), "image_shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if categories is not None:
        helper.set_model_props(model, {"couturier.categories": json.dumps(list(categories))})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def with_categories(path: Path, categories: tuple[str, ...]) -> Path:
    """Give an ONNX file the category list of an export (``couturier.categories`` metadata)."""
    model = onnx.load(str(path))
    helper.set_model_props(model, {"couturier.categories": json.dumps(list(categories))})
    onnx.save(model, str(path))
    return path
