"""Read the serving signature (names, element types, shapes) of an exported ONNX model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from couturier.export.triton.errors import SignatureError

#: ONNX element type -> Triton data type name (model_config.proto ``DataType``).
ONNX_TO_TRITON: dict[int, str] = {
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.STRING: "TYPE_STRING",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: -1 marks a dynamic axis.

    ``dims`` exclude the batch axis for a batched model and are the full ONNX shape for an unbatched one.
    """

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    """Inputs and outputs of a model, in the ONNX graph's order.

    ``batched``: dim 0 of every tensor is Triton's batch axis (left out of ``dims``); otherwise the
    model is served unbatched (``max_batch_size: 0``) and ``dims`` are the full shapes.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    batched: bool = True

    def same_io(self, other: ModelSignature) -> bool:
        """True when both signatures have the same tensors and batching (the opset may differ)."""
        return self.inputs == other.inputs and self.outputs == other.outputs and self.batched == other.batched


def _dims(dims) -> tuple[int, ...]:  # noqa: ANN001 (repeated TensorShapeProto.Dimension)
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)


def _tensor_spec(value: onnx.ValueInfoProto, where: str, batched: bool = True) -> TensorSpec:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        raise SignatureError(f"{where} {value.name!r} is not a tensor; only tensors can be served")
    if tensor.elem_type not in ONNX_TO_TRITON:
        name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise SignatureError(f"{where} {value.name!r} has element type {name}, which Triton cannot serve")
    if not batched:
        if not tensor.HasField("shape") or len(tensor.shape.dim) == 0:
            raise SignatureError(
                f"{where} {value.name!r} has no shape (or is a scalar); an unbatched model needs tensors of rank >= 1"
            )
        return TensorSpec(value.name, ONNX_TO_TRITON[tensor.elem_type], _dims(tensor.shape.dim))
    if not tensor.HasField("shape") or len(tensor.shape.dim) == 0:
        raise SignatureError(
            f"{where} {value.name!r} has no shape (or is a scalar); export it with a leading dynamic batch axis"
        )
    first, *rest = tensor.shape.dim
    if first.HasField("dim_value"):
        raise SignatureError(
            f"{where} {value.name!r} has a fixed first axis of size {first.dim_value}; dim 0 must be the "
            "dynamic batch axis (export with dynamic_shapes / dynamic_axes={0: 'batch'}), or publish the "
            "model unbatched (batched=False) when axis 0 is not a batch axis"
        )
    return TensorSpec(value.name, ONNX_TO_TRITON[tensor.elem_type], _dims(rest))


def read_signature(onnx_path: str | Path, *, batched: bool = True) -> ModelSignature:
    """Signature of ``onnx_path``.

    ``batched`` (default): dim 0 of every input and output must be a dynamic axis (Triton's batch
    axis), else :class:`SignatureError`. ``batched=False``: no requirement on dim 0; dims are the
    full shapes (symbolic axes -> -1), for models whose inputs do not share a batch axis.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise SignatureError(f"no ONNX file at {path}")
    try:
        # Only the graph's interface is needed: skip loading external weight files.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise SignatureError(f"{path} is not a readable ONNX model: {exc}") from exc
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_tensor_spec(v, "input", batched) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_tensor_spec(v, "output", batched) for v in model.graph.output)
    if not inputs or not outputs:
        raise SignatureError(f"{path} has no graph inputs or no outputs")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return ModelSignature(inputs=inputs, outputs=outputs, opset=opset, batched=batched)
