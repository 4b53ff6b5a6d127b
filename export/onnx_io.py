"""ONNX export of forward models, signature inspection and onnxruntime-vs-torch parity checks.

Every model couturier serves goes through Triton as a single self-contained ``model.onnx``
(no external data), default-domain opset >= 18, with a dynamic batch axis 0 on every input and
output unless declared otherwise. Gradient models are produced by
:func:`couturier.export.grad_export.export_value_and_grad` and share the helpers here.

What a model says about itself (e.g. the category list of a model that takes a category one-hot)
is written into its ``metadata_props`` under ``couturier.`` (:func:`write_metadata`); the keys are
defined in :mod:`couturier.services.common.model_metadata`, which the services read them with.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from couturier.export.triton.signature import TensorSpec, tensor_specs, written_opset
from couturier.services.common.model_metadata import CATEGORIES_KEY, METADATA_PREFIX, encode_categories

__all__ = [
    "MIN_OPSET",
    "DynamicAxes",
    "OnnxExportError",
    "OnnxSignature",
    "OutputParity",
    "ParityReport",
    "build_dynamic_shapes",
    "category_metadata",
    "check_parity",
    "drop_unused_pool_indices",
    "export_forward",
    "finalize_onnx",
    "make_session",
    "onnx_signature",
    "read_metadata",
    "rename_io",
    "run_onnx",
    "write_metadata",
]

#: The lowest default-domain opset couturier accepts in an exported file.
MIN_OPSET = 18

#: Per input name: ``{axis: dim_name}``. Inputs sharing a dim name must agree on that size.
DynamicAxes = Mapping[str, Mapping[int, str]]


class OnnxExportError(RuntimeError):
    """An export produced no usable ONNX file (failed export, checker error, wrong opset)."""


@dataclass(frozen=True)
class OnnxSignature:
    """Inputs, outputs (as the graph declares them: symbolic axes by name) and default-domain opset of an ONNX file."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass(frozen=True)
class OutputParity:
    """Agreement of one output: max abs / rel error and whether ``|a-b| <= atol + rtol|b|`` holds."""

    name: str
    max_abs_err: float
    max_rel_err: float
    ok: bool


@dataclass
class ParityReport:
    """Result of :func:`check_parity`; ``ok`` when every output agrees within tolerance."""

    rtol: float
    atol: float
    outputs: list[OutputParity] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def __str__(self) -> str:
        rows = [
            f"{o.name}: max_abs={o.max_abs_err:.3g} max_rel={o.max_rel_err:.3g} {'ok' if o.ok else 'FAIL'}"
            for o in self.outputs
        ]
        return f"parity rtol={self.rtol:g} atol={self.atol:g}: " + "; ".join(rows)


def onnx_signature(path: str | os.PathLike[str] | onnx.ModelProto) -> OnnxSignature:
    """Graph inputs (initializers excluded), outputs and opset of an ONNX file."""
    model = path if isinstance(path, onnx.ModelProto) else onnx.load(os.fspath(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    outputs = tensor_specs(model.graph.output, "output")
    return OnnxSignature(tensor_specs(inputs, "input"), outputs, written_opset(model))


def category_metadata(categories: Sequence[str]) -> dict[str, str]:
    """The metadata of a model that takes a category one-hot: its category names in one-hot order."""
    return {CATEGORIES_KEY: encode_categories(categories)}


def write_metadata(path: str | os.PathLike[str], meta: Mapping[str, Any]) -> None:
    """Set the file's ``couturier.*`` metadata to ``meta`` (keys without the prefix; values as ``str``).

    Replaces every ``couturier.*`` entry the file had; other entries are kept."""
    model = onnx.load(os.fspath(path), load_external_data=False)
    keep = [p for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in meta.items():
        model.metadata_props.add(key=METADATA_PREFIX + key, value=str(value))
    onnx.checker.check_model(model)
    onnx.save_model(model, os.fspath(path), save_as_external_data=False)


def read_metadata(path: str | os.PathLike[str] | onnx.ModelProto) -> dict[str, str]:
    """The ``couturier.*`` metadata of an ONNX file (prefix stripped)."""
    model = path if isinstance(path, onnx.ModelProto) else onnx.load(os.fspath(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX) :]: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def build_dynamic_shapes(
    input_names: Sequence[str],
    example_inputs: Sequence[torch.Tensor],
    dynamic_axes: DynamicAxes | None = None,
    *,
    dynamic_batch: bool = True,
) -> tuple[tuple[dict[int, Any], ...], dict[str, dict[int, str]]]:
    """``torch.export`` dynamic shapes (one dict per input) and the resolved ``{input: {axis: name}}``.

    Inputs not named in ``dynamic_axes`` get ``{0: "batch"}`` when ``dynamic_batch`` (else static).
    Example sizes on dynamic axes must be >= 2: size-1 dims are specialised by the tracers.
    """
    dynamic_axes = dict(dynamic_axes or {})
    unknown = set(dynamic_axes) - set(input_names)
    if unknown:
        raise ValueError(f"dynamic_axes names unknown inputs {sorted(unknown)}; inputs are {list(input_names)}")
    dims: dict[str, Any] = {}
    shapes: list[dict[int, Any]] = []
    resolved: dict[str, dict[int, str]] = {}
    for name, t in zip(input_names, example_inputs, strict=True):
        axes = dict(dynamic_axes[name]) if name in dynamic_axes else ({0: "batch"} if dynamic_batch and t.dim() else {})
        spec: dict[int, Any] = {}
        for axis, dim_name in axes.items():
            axis = axis % t.dim() if t.dim() else axis
            if axis >= t.dim():
                raise ValueError(f"input {name!r} has {t.dim()} dims, cannot make axis {axis} dynamic")
            if t.shape[axis] < 2:
                raise ValueError(
                    f"input {name!r}: example size on dynamic axis {axis} ({dim_name!r}) is {t.shape[axis]};"
                    " use an example size >= 2 (size-1 dims are specialised during tracing)"
                )
            if dim_name not in dims:
                dims[dim_name] = torch.export.Dim(dim_name)
            spec[axis] = dims[dim_name]
        shapes.append(spec)
        resolved[name] = {axis % max(t.dim(), 1): dim_name for axis, dim_name in axes.items()}
    return tuple(shapes), resolved


def finalize_onnx(
    path: Path, *, opset: int, input_names: Sequence[str], output_names: Sequence[str]
) -> onnx.ModelProto:
    """Check a written file: checker, single file, declared names, default-domain opset >= ``opset``."""
    if not path.is_file():
        raise OnnxExportError(f"exporter wrote no file at {path}")
    model = onnx.load(os.fspath(path), load_external_data=False)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise OnnxExportError(f"{path}: initializer {init.name!r} uses external data; expected one file")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"{path}: onnx.checker rejected the model: {exc}") from exc
    got = written_opset(model)
    if got < max(opset, MIN_OPSET):
        raise OnnxExportError(
            f"{path}: asked for opset {opset} but the file declares default-domain opset {got}"
            f" (couturier needs >= {max(opset, MIN_OPSET)})"
        )
    sig = onnx_signature(model)
    if sig.input_names != list(input_names) or sig.output_names != list(output_names):
        raise OnnxExportError(
            f"{path}: graph signature {sig.input_names} -> {sig.output_names} differs from the requested"
            f" {list(input_names)} -> {list(output_names)}"
        )
    return model


def _torch_onnx_export(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: tuple[dict[int, Any], ...] | None,
    opset: int,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                example_inputs,
                os.fspath(path),
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:
            raise OnnxExportError(f"torch.onnx.export failed for {path.name}: {type(exc).__name__}: {exc}") from exc
    # Names are applied afterwards: the exporter's own renaming can collide with internal value
    # names (an input called "cat" next to an aten.cat node gave a non-SSA graph).
    proto = onnx.load(os.fspath(path), load_external_data=False)
    rename_io(proto, input_names, output_names)
    drop_unused_pool_indices(proto)
    onnx.save_model(proto, os.fspath(path), save_as_external_data=False)


def _rename_values(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_values(sub, mapping)
    for coll in (graph.input, graph.output, graph.value_info):
        for v in coll:
            v.name = mapping.get(v.name, v.name)
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)


def drop_unused_pool_indices(model: onnx.ModelProto) -> int:
    """Remove unconsumed ``Indices`` outputs of ``MaxPool`` nodes (onnxruntime then skips computing
    them, which is far slower than the pooling itself). Returns the number of nodes changed."""
    graph = model.graph
    consumed = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                consumed |= {n for sub_node in sub.node for n in sub_node.input}
    changed = 0
    for node in graph.node:
        if node.op_type == "MaxPool" and node.domain in ("", "ai.onnx") and len(node.output) == 2:
            if node.output[1] and node.output[1] not in consumed:
                del node.output[1]
                changed += 1
    return changed


def rename_io(model: onnx.ModelProto, input_names: Sequence[str], output_names: Sequence[str]) -> None:
    """Rename graph inputs/outputs in place, moving any internal value that holds a wanted name."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    if len(inputs) != len(input_names) or len(graph.output) != len(output_names):
        raise OnnxExportError(
            f"exported graph has {len(inputs)} inputs / {len(graph.output)} outputs, expected"
            f" {len(input_names)} / {len(output_names)}"
        )
    if len(set(input_names) | set(output_names)) != len(input_names) + len(output_names):
        raise ValueError("input and output names must be unique")
    # An output that is a graph input or repeats another output gets its own Identity node.
    seen = {v.name for v in inputs}
    for out in graph.output:
        if out.name in seen:
            fresh = f"{out.name}__out{len(seen)}"
            graph.node.append(onnx.helper.make_node("Identity", [out.name], [fresh]))
            out.name = fresh
        seen.add(out.name)
    used = {n for node in graph.node for n in (*node.input, *node.output)} | inits | {v.name for v in graph.input}
    old = [v.name for v in inputs] + [v.name for v in graph.output]
    new = list(input_names) + list(output_names)
    mapping = {o: n for o, n in zip(old, new, strict=True) if o != n}
    taken = used | set(new)
    for name in new:
        if name in used and name not in old:  # held by an internal value: move that one aside
            i = 0
            while f"{name}__{i}" in taken:
                i += 1
            mapping[name] = f"{name}__{i}"
            taken.add(mapping[name])
    _rename_values(graph, mapping)


def export_forward(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool = True,
    dynamic_axes: DynamicAxes | None = None,
    opset: int = 18,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``module`` (put in eval mode) to one self-contained ONNX file and validate it.

    Axis 0 of every input is a shared dynamic ``batch`` axis unless ``dynamic_batch=False`` or the
    input has its own entry in ``dynamic_axes`` (e.g. ``{"theta": {0: "users"}}``, ``{"w": {}}``).
    Outputs get whatever dynamic dims follow from the inputs. ``metadata`` is written as the file's
    ``couturier.*`` metadata (:func:`write_metadata`; e.g. :func:`category_metadata`). Raises
    :class:`OnnxExportError` when the export fails, the checker rejects the file, or the written
    opset is below ``opset``/18.
    """
    if len(input_names) != len(example_inputs):
        raise ValueError(f"{len(example_inputs)} example inputs but {len(input_names)} input names")
    path = Path(path)
    module.eval()
    shapes, _ = build_dynamic_shapes(input_names, example_inputs, dynamic_axes, dynamic_batch=dynamic_batch)
    has_dynamic = any(shapes)
    with torch.no_grad():
        _torch_onnx_export(
            module,
            tuple(example_inputs),
            path,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=shapes if has_dynamic else None,
            opset=opset,
        )
    finalize_onnx(path, opset=opset, input_names=input_names, output_names=output_names)
    if metadata:
        write_metadata(path, metadata)
    return path


def make_session(path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An onnxruntime CPU :class:`InferenceSession` (optionally limited to ``threads`` intra-op threads)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def run_onnx(session_or_path: Any, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run an ONNX model (session or path) on named inputs; returns ``{output_name: array}``."""
    sess = make_session(session_or_path) if isinstance(session_or_path, (str, os.PathLike)) else session_or_path
    feeds = {k: _to_numpy(v) for k, v in inputs.items()}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def check_parity(
    module_or_fn: torch.nn.Module | Callable[..., Any],
    onnx_path: str | os.PathLike[str],
    inputs: Mapping[str, Any],
    *,
    rtol: float,
    atol: float,
) -> ParityReport:
    """Compare onnxruntime (CPU) with torch on the same named inputs.

    ``module_or_fn`` is called positionally in the ONNX input order with float tensors converted from
    ``inputs``; its outputs (a tensor or tuple) are matched to the ONNX outputs in order. Modules run
    under ``no_grad`` in eval mode; plain callables run as given (gradient functions need autograd).
    """
    sig = onnx_signature(onnx_path)
    missing = set(sig.input_names) - set(inputs)
    if missing:
        raise ValueError(f"missing inputs {sorted(missing)} for {onnx_path}")
    got = run_onnx(onnx_path, {n: inputs[n] for n in sig.input_names})
    args = [torch.as_tensor(_to_numpy(inputs[n])) for n in sig.input_names]
    if isinstance(module_or_fn, torch.nn.Module):
        module_or_fn.eval()
        with torch.no_grad():
            ref = module_or_fn(*args)
    else:
        ref = module_or_fn(*args)
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    if len(refs) != len(sig.outputs):
        raise ValueError(f"torch returned {len(refs)} outputs, the ONNX model has {len(sig.outputs)}")
    report = ParityReport(rtol=rtol, atol=atol)
    for spec, r in zip(sig.outputs, refs, strict=True):
        a = got[spec.name].astype(np.float64)
        b = _to_numpy(r).astype(np.float64)
        if a.shape != b.shape:
            report.outputs.append(OutputParity(spec.name, float("inf"), float("inf"), False))
            continue
        diff = np.abs(a - b)
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(np.abs(b), 1e-12)).max()) if diff.size else 0.0
        ok = bool(np.all(diff <= atol + rtol * np.abs(b)))
        report.outputs.append(OutputParity(spec.name, max_abs, max_rel, ok))
    return report
