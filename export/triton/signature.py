"""Signatures (names, element types, shapes) of ONNX models: as the graph declares them, and as Triton serves them.

:class:`TensorSpec` is couturier's one description of a tensor. :func:`tensor_specs` reads it from an
ONNX graph (``couturier.export.onnx_io.onnx_signature`` uses it too); :func:`read_signature` turns
those into the serving signature Triton's ``config.pbtxt`` is generated from. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from couturier.export.triton.errors import SignatureError

#: Element type (:attr:`TensorSpec.dtype`) -> Triton data type name (model_config.proto ``DataType``).
TRITON_TYPES: dict[str, str] = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "object": "TYPE_STRING",  # ONNX STRING tensors: numpy object arrays
    "bfloat16": "TYPE_BF16",
}
#: Triton data type name -> element type (the inverse of :data:`TRITON_TYPES`).
ELEMENT_TYPES: dict[str, str] = {triton: dtype for dtype, triton in TRITON_TYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model.

    ``dtype``: numpy's name of the element type (``float32``, ``int64``; ``object`` for strings; ONNX's
    lower-case name where numpy has none, e.g. ``bfloat16``).
    ``shape``: ints for fixed sizes; a dynamic axis is its symbolic name (``str``, ``"?"`` when unnamed)
    as read from an ONNX graph, and -1 in a serving signature (Triton names no axes). A serving
    signature of a batched model leaves the batch axis out.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @property
    def triton_type(self) -> str:
        """Triton's data type name, e.g. ``TYPE_FP32``."""
        try:
            return TRITON_TYPES[self.dtype]
        except KeyError:
            raise SignatureError(
                f"tensor {self.name!r} has element type {self.dtype}, which Triton cannot serve"
            ) from None

    @property
    def dims(self) -> tuple[int, ...]:
        """The shape with every dynamic axis as -1 (Triton's ``dims``)."""
        return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in self.shape)


def written_opset(model: onnx.ModelProto) -> int:
    """The default-domain (``""`` / ``ai.onnx``) opset a model declares, or 0 if none."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # bfloat16, float8 ... have no numpy dtype
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def tensor_specs(values: Sequence[onnx.ValueInfoProto], where: str = "tensor") -> tuple[TensorSpec, ...]:
    """Specs of graph inputs or outputs as the graph declares them (symbolic axes by name)."""
    specs = []
    for value in values:
        if not value.type.HasField("tensor_type"):
            raise SignatureError(f"{where} {value.name!r} is not a tensor; only tensors can be served")
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, _dtype_name(tensor.elem_type), shape))
    return tuple(specs)


@dataclass(frozen=True)
class ModelSignature:
    """Inputs and outputs of a model as Triton serves it, in the ONNX graph's order.

    ``batched``: dim 0 of every tensor is Triton's batch axis (left out of ``shape``); otherwise the
    model is served unbatched (``max_batch_size: 0``) and ``shape`` is the full shape.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    batched: bool = True

    def same_io(self, other: ModelSignature) -> bool:
        """True when both signatures have the same tensors and batching (the opset may differ)."""
        return self.inputs == other.inputs and self.outputs == other.outputs and self.batched == other.batched


def _served(spec: TensorSpec, where: str, batched: bool) -> TensorSpec:
    """``spec`` as Triton serves it: a type Triton knows, -1 for dynamic axes, no batch axis when batched."""
    if spec.dtype not in TRITON_TYPES:
        raise SignatureError(f"{where} {spec.name!r} has element type {spec.dtype}, which Triton cannot serve")
    if not spec.shape:
        raise SignatureError(
            f"{where} {spec.name!r} has no shape (or is a scalar); "
            + (
                "export it with a leading dynamic batch axis"
                if batched
                else "an unbatched model needs tensors of rank >= 1"
            )
        )
    dims = spec.dims
    if batched:
        first = spec.shape[0]
        if isinstance(first, int):
            raise SignatureError(
                f"{where} {spec.name!r} has a fixed first axis of size {first}; dim 0 must be the "
                "dynamic batch axis (export with dynamic_shapes / dynamic_axes={0: 'batch'}), or publish the "
                "model unbatched (batched=False) when axis 0 is not a batch axis"
            )
        dims = dims[1:]
    return TensorSpec(spec.name, spec.dtype, dims)


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
    graph_inputs = [v for v in model.graph.input if v.name not in initializers]
    inputs = tuple(_served(spec, "input", batched) for spec in tensor_specs(graph_inputs, "input"))
    outputs = tuple(_served(spec, "output", batched) for spec in tensor_specs(model.graph.output, "output"))
    if not inputs or not outputs:
        raise SignatureError(f"{path} has no graph inputs or no outputs")
    return ModelSignature(inputs=inputs, outputs=outputs, opset=written_opset(model), batched=batched)
