"""Build Triton's ``config.pbtxt`` from a model signature with Triton's own protobuf schema."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb

from couturier.export.triton.signature import ELEMENT_TYPES, ModelSignature, TensorSpec
from couturier.services.common.model_repository import RepositoryError, VersionPolicy

InstanceKind = Literal["KIND_CPU", "KIND_GPU"]
#: The backend name written to every config: NGC Triton's native onnxruntime backend in production,
#: couturier's Python-based backend of the same name on the local server.
BACKEND = "onnxruntime"
#: The config parameter both onnxruntime backends read for the threads of one instance's session.
INTRA_OP_THREADS = "intra_op_thread_count"


@dataclass(frozen=True)
class ServingOptions:
    """Everything in ``config.pbtxt`` that is not the signature.

    ``batched=False`` serves the model unbatched: ``max_batch_size: 0``, no ``dynamic_batching``
    (``max_batch_size``, ``dynamic_batching``, ``preferred_batch_sizes`` and ``max_queue_delay_us``
    are then kept but not written).
    """

    max_batch_size: int = 64
    instance_kind: InstanceKind = "KIND_CPU"
    instance_count: int = 1
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 500
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    #: Backend parameters, e.g. onnxruntime's ``intra_op_thread_count`` (:data:`INTRA_OP_THREADS`, threads per
    #: instance; with ``instance_count`` the model's share of the cores); keep to standard keys. Publishing
    #: adds couturier's ``couturier.*`` entries from the ONNX metadata (backends ignore unknown keys).
    parameters: Mapping[str, str] = field(default_factory=dict)
    batched: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(
                "max_batch_size must be >= 1 (dim 0 is the batch axis); serve the model unbatched with batched=False"
            )
        if self.instance_kind not in ("KIND_CPU", "KIND_GPU"):
            raise ValueError(f"instance_kind must be KIND_CPU or KIND_GPU, not {self.instance_kind!r}")
        if self.instance_count < 1:
            raise ValueError("instance_count must be >= 1")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} are outside 1..max_batch_size={self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ValueError("max_queue_delay_us must be >= 0")


def _add_tensors(target, specs: Sequence[TensorSpec], batched: bool) -> None:  # noqa: ANN001 (repeated proto field)
    for spec in specs:
        tensor = target.add()
        tensor.name = spec.name
        tensor.data_type = pb.DataType.Value(spec.triton_type)
        if spec.dims:
            tensor.dims.extend(spec.dims)
        elif batched:  # a [batch] tensor: Triton needs non-empty dims, the model sees no inner axis
            tensor.dims.append(1)
            tensor.reshape.SetInParent()
        else:
            raise RepositoryError(f"tensor {spec.name!r} is a scalar; an unbatched model needs tensors of rank >= 1")


def build_model_config(name: str, signature: ModelSignature, options: ServingOptions) -> pb.ModelConfig:
    """The model's ``ModelConfig`` message: standard fields only, servable by NGC Triton unchanged.

    Batched: ``max_batch_size`` >= 1, dims without the batch axis, ``dynamic_batching`` as asked.
    Unbatched: ``max_batch_size: 0``, the full shapes (-1 for dynamic axes), no dynamic batching.
    """
    if signature.batched != options.batched:
        raise RepositoryError(
            f"the signature was read {'batched' if signature.batched else 'unbatched'} but the options ask for "
            f"{'batched' if options.batched else 'unbatched'} serving; read it with batched={options.batched}"
        )
    config = pb.ModelConfig(name=name, backend=BACKEND, max_batch_size=options.max_batch_size if options.batched else 0)
    config.version_policy.CopyFrom(options.version_policy.to_proto())
    _add_tensors(config.input, signature.inputs, options.batched)
    _add_tensors(config.output, signature.outputs, options.batched)
    if options.batched and options.dynamic_batching:
        config.dynamic_batching.preferred_batch_size.extend(sorted(set(options.preferred_batch_sizes)))
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    group = config.instance_group.add()
    group.count = options.instance_count
    group.kind = pb.ModelInstanceGroup.Kind.Value(options.instance_kind)
    for key, value in options.parameters.items():
        config.parameters[key].string_value = str(value)
    return config


def render_config(config: pb.ModelConfig) -> str:
    """``config.pbtxt`` text of ``config``."""
    return text_format.MessageToString(config)


def config_to_json(config: pb.ModelConfig) -> str:
    """JSON form Triton's load API takes as a config override."""
    return json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True))


def is_batched(config: pb.ModelConfig) -> bool:
    """True when Triton batches the model (``max_batch_size`` >= 1: dim 0 is the batch axis)."""
    return config.max_batch_size > 0


def config_signature(config: pb.ModelConfig) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) a config declares, comparable with a :class:`ModelSignature` of the same batching."""

    def spec(tensor) -> TensorSpec:  # noqa: ANN001
        type_name = pb.DataType.Name(tensor.data_type)
        dims = () if tensor.HasField("reshape") and not tensor.reshape.shape else tuple(tensor.dims)
        return TensorSpec(tensor.name, ELEMENT_TYPES.get(type_name, type_name), dims)

    def specs(tensors) -> tuple[TensorSpec, ...]:  # noqa: ANN001
        return tuple(spec(t) for t in tensors)

    return specs(config.input), specs(config.output)
