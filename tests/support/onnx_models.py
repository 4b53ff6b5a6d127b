"""Tiny ONNX models for the Triton and model-repository tests, built with onnx.helper (no torch)."""

from __future__ import annotations

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
