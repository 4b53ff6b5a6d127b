"""Model repository writer: config.pbtxt generated from the ONNX signature; in-process onnxruntime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from couturier.export.triton.errors import RepositoryError, SignatureError
from couturier.export.triton.model_config import (
    INTRA_OP_THREADS,
    ServingOptions,
    build_model_config,
    config_signature,
)
from couturier.export.triton.repository import (
    list_versions,
    publish_model,
    read_model_config,
    read_signature,
    served_versions,
    write_model_config,
)
from couturier.services.common.inference import BadInferenceInput, ModelNotReady, OnnxRuntimeBackend, make_backend
from couturier.services.common.model_repository import VersionPolicy
from support.onnx_models import linear_model, linear_weights, two_output_model, user_weights, users_model


def test_config_is_generated_from_the_onnx_signature(tmp_path: Path) -> None:
    onnx_path = two_output_model(tmp_path / "two.onnx")
    published = publish_model(
        tmp_path / "repo",
        "two",
        onnx_path,
        kind="KIND_GPU",
        max_batch_size=32,
        preferred_batch_sizes=[8, 4],
        max_queue_delay_us=2000,
        version_policy="specific:1",
    )
    assert published.version == 1
    assert published.onnx_path == tmp_path / "repo" / "two" / "1" / "model.onnx"
    config = text_format.Parse(published.config_path.read_text(), pb.ModelConfig())
    assert config == published.config
    assert (config.name, config.backend, config.max_batch_size) == ("two", "onnxruntime", 32)
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert list(config.version_policy.specific.versions) == [1]
    signature = read_signature(onnx_path)
    assert config_signature(config) == (signature.inputs, signature.outputs)
    assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("img", "TYPE_FP32", [3, 6]),
        ("w", "TYPE_FP32", [1]),
    ]
    assert [(t.name, pb.DataType.Name(t.data_type)) for t in config.output] == [
        ("score", "TYPE_FP32"),
        ("ids", "TYPE_INT64"),
    ]
    # [batch] tensors: Triton needs non-empty dims; the reshape tells it the model sees no inner axis
    assert config.output[0].HasField("reshape") and list(config.output[0].reshape.shape) == []
    assert not config.input[0].HasField("reshape")


def test_versions_are_numbered_immutable_and_keep_their_options(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = publish_model(repo, "lin", linear_model(tmp_path / "a.onnx", seed=0), max_batch_size=16)
    second = publish_model(repo, "lin", linear_model(tmp_path / "b.onnx", seed=1))
    assert (first.version, second.version) == (1, 2)
    assert second.config.max_batch_size == 16  # kept from the existing config
    assert list_versions(repo, "lin") == [1, 2]
    assert served_versions(repo, "lin") == [2]  # default policy: latest 1
    with pytest.raises(RepositoryError, match="immutable"):
        publish_model(repo, "lin", tmp_path / "a.onnx", version=2)
    other = linear_model(tmp_path / "wide.onnx", n_in=9)
    with pytest.raises(RepositoryError, match="different signature"):
        publish_model(repo, "lin", other)
    assert not [p for p in (repo / "lin").iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_a_fixed_batch_axis_is_refused(tmp_path: Path) -> None:
    fixed = linear_model(tmp_path / "fixed.onnx", batch=4)
    with pytest.raises(SignatureError, match="dim 0 must be the dynamic batch axis"):
        read_signature(fixed)
    with pytest.raises(SignatureError):
        publish_model(tmp_path / "repo", "fixed", fixed)
    assert not (tmp_path / "repo" / "fixed").exists()


def test_version_policy_parsing() -> None:
    assert VersionPolicy.parse("latest:2").select([1, 2, 3]) == [2, 3]
    assert VersionPolicy.parse("all").select([3, 1]) == [1, 3]
    assert VersionPolicy.parse("specific:1,3").select([1, 2, 3]) == [1, 3]
    with pytest.raises(ValueError):
        VersionPolicy.parse("newest")


async def test_onnxruntime_backend_serves_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish_model(repo, "lin", linear_model(tmp_path / "a.onnx", seed=0))
    backend = make_backend("onnxruntime", repo_dir=repo)
    assert isinstance(backend, OnnxRuntimeBackend)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    w0, b0 = linear_weights(0)
    assert await backend.is_ready("lin")
    assert await backend.input_shapes("lin") == {"x": (-1, 8)}
    assert await backend.output_shapes("lin") == {"y": (-1, 4)}  # from the session, without running the model
    out = await backend.infer("lin", {"x": x})
    np.testing.assert_allclose(out["y"], x @ w0 + b0, rtol=1e-5, atol=1e-5)
    publish_model(repo, "lin", linear_model(tmp_path / "b.onnx", seed=1))  # latest 1 -> serves v2 now
    w1, b1 = linear_weights(1)
    np.testing.assert_allclose((await backend.infer("lin", {"x": x}))["y"], x @ w1 + b1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        (await backend.infer("lin", {"x": x}, version="1"))["y"], x @ w0 + b0, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(BadInferenceInput):
        await backend.infer("lin", {"x": x.astype(np.float64)})
    with pytest.raises(BadInferenceInput):
        await backend.infer("lin", {"z": x})
    with pytest.raises(BadInferenceInput):
        await backend.infer("lin", {"x": x[:, :5]})
    with pytest.raises(ModelNotReady):
        await backend.infer("missing", {"x": x})
    assert not await backend.is_ready("missing")
    await backend.close()


def _tensors(tensors) -> list[tuple[str, str, list[int]]]:
    return [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def test_unbatched_model_gets_full_shapes_and_no_batching(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    onnx_path = users_model(tmp_path / "users.onnx", dim=4)
    published = publish_model(repo, "users", onnx_path, batched=False, max_queue_delay_us=900)
    config = text_format.Parse(published.config_path.read_text(), pb.ModelConfig())
    assert config == published.config
    assert (config.backend, config.max_batch_size) == ("onnxruntime", 0)
    assert not config.HasField("dynamic_batching")
    assert _tensors(config.input) == [("z", "TYPE_FP32", [-1, 4]), ("theta", "TYPE_FP32", [-1, 4])]
    assert _tensors(config.output) == [("out", "TYPE_FP32", [-1, -1]), ("value", "TYPE_FP32", [-1])]
    assert not any(t.HasField("reshape") for t in [*config.input, *config.output])
    signature = read_signature(onnx_path, batched=False)
    assert not signature.batched and published.signature == signature
    assert config_signature(config) == (signature.inputs, signature.outputs)
    # the next version stays unbatched without being told; the batching mode cannot flip
    second = publish_model(repo, "users", onnx_path)
    assert second.version == 2 and second.config.max_batch_size == 0
    assert not second.config.HasField("dynamic_batching")
    with pytest.raises(RepositoryError, match="unbatched"):
        publish_model(repo, "users", onnx_path, batched=True)
    # batched models keep refusing a fixed dim 0; unbatched ones take it as a plain axis
    fixed = publish_model(repo, "fixed", linear_model(tmp_path / "fixed.onnx", batch=4), batched=False)
    assert _tensors(fixed.config.input) == [("x", "TYPE_FP32", [4, 8])]
    # a batched model published unbatched is valid too (full shapes, no reshape for [batch] tensors)
    two = publish_model(repo, "two", two_output_model(tmp_path / "two.onnx"), batched=False)
    assert _tensors(two.config.output) == [("score", "TYPE_FP32", [-1]), ("ids", "TYPE_INT64", [-1])]
    assert not any(t.HasField("reshape") for t in [*two.config.input, *two.config.output])
    with pytest.raises(RepositoryError, match="batched"):
        build_model_config("x", signature, ServingOptions())  # unbatched signature, batched options


async def test_onnxruntime_backend_serves_an_unbatched_model(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish_model(repo, "users", users_model(tmp_path / "users.onnx", dim=4), batched=False)
    backend = OnnxRuntimeBackend(repo)
    assert await backend.output_shapes("users") == {"out": (-1, -1), "value": (-1,)}
    rng = np.random.default_rng(4)
    for b, u in ((3, 5), (2, 1)):
        z = rng.normal(size=(b, 4)).astype(np.float32)
        theta = rng.normal(size=(u, 4)).astype(np.float32)
        out = await backend.infer("users", {"z": z, "theta": theta})
        assert out["out"].shape == (b, u) and out["value"].shape == (b,)
        np.testing.assert_allclose(out["out"], z @ theta.T, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["value"], (z * user_weights()).sum(1), rtol=1e-5, atol=1e-5)
    await backend.close()


def test_gradient_models_are_published_batched_with_per_model_instances(tmp_path: Path) -> None:
    """publish_all: every model batched; a gradient model still served unbatched (the per-user signature
    of older exports) is moved out of the repository and its numbers continue; instance count and
    onnxruntime threads are per model (serving defaults for new models, given values always)."""
    from couturier.export.pipeline import SERVING_DEFAULTS, publish_all
    from support.onnx_models import pref_grad_model

    repo = tmp_path / "repo"
    old = users_model(tmp_path / "old.onnx", dim=4)  # z [batch, 4] and theta [users, 4]: not one batch axis
    publish_model(repo, "pref_grad", old, batched=False)
    publish_model(repo, "pref_grad", old)
    new = pref_grad_model(tmp_path / "pref_grad.onnx", ("tops", "bags", "shoes"))
    notes: list[str] = []
    versions = publish_all(
        {"pref_grad": new, "item_encoder": linear_model(tmp_path / "lin.onnx")}, repo, echo=notes.append
    )
    assert versions == {"pref_grad": "3", "item_encoder": "1"}
    (retired,) = (tmp_path / "repo-retired").iterdir()
    assert retired.name.startswith("pref_grad-") and list_versions(retired.parent, retired.name) == [1, 2]
    assert len(notes) == 1 and str(retired) in notes[0] and "unbatched" in notes[0]
    config = read_model_config(repo, "pref_grad")
    assert config.max_batch_size == 64 and config.dynamic_batching.max_queue_delay_microseconds == 500
    count, threads = SERVING_DEFAULTS["KIND_CPU"]["pref_grad"]
    assert config.instance_group[0].count == count
    assert config.parameters[INTRA_OP_THREADS].string_value == str(threads)
    assert config.parameters["couturier.categories"].string_value  # the published metadata is kept
    plain = read_model_config(repo, "item_encoder")  # no default: one instance, onnxruntime's threads
    assert plain.instance_group[0].count == 1 and INTRA_OP_THREADS not in plain.parameters
    # a hand-edited config is kept on the next export; given values win, "*" means every model
    write_model_config(repo, "pref_grad", _with_count(config, 5))
    publish_all({"pref_grad": new}, repo, echo=notes.append)
    assert read_model_config(repo, "pref_grad").instance_group[0].count == 5
    publish_all({"pref_grad": new}, repo, instance_counts={"pref_grad": 3}, intra_op_threads={"*": 0})
    config = read_model_config(repo, "pref_grad")
    assert config.instance_group[0].count == 3 and config.parameters[INTRA_OP_THREADS].string_value == "0"
    assert list_versions(repo, "pref_grad") == [3, 4, 5] and len(notes) == 1


def _with_count(config: pb.ModelConfig, count: int) -> pb.ModelConfig:
    edited = pb.ModelConfig()
    edited.CopyFrom(config)
    edited.instance_group[0].count = count
    return edited


def test_per_model_options_parse(tmp_path: Path) -> None:
    from couturier.export.pipeline import parse_per_model

    assert parse_per_model(["pref_grad=2", "3", "inv_grad = 4"], "--instance-count") == {
        "pref_grad": 2,
        "*": 3,
        "inv_grad": 4,
    }
    with pytest.raises(ValueError, match="unknown model 'pref'"):
        parse_per_model(["pref=2"], "--instance-count")
    with pytest.raises(ValueError, match="MODEL=N or N"):
        parse_per_model(["pref_grad=two"], "--instance-count")
    with pytest.raises(ValueError, match=">= 1"):
        parse_per_model(["0"], "--instance-count")
    assert parse_per_model(["0"], "--threads", minimum=0) == {"*": 0}
    with pytest.raises(RepositoryError, match="intra_op_threads"):
        publish_model(tmp_path / "repo", "x", linear_model(tmp_path / "x.onnx"), intra_op_threads=-1)
    assert not (tmp_path / "repo" / "x").exists()
