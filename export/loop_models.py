"""K-step optimisation loop models: K Adam steps of a latent optimiser inside one ONNX model call.

:func:`build_loop_model` takes an exported gradient model (``pref_grad``, ``inv_grad``,
``shift_grad``: outputs ``value``, the gradient, auxiliary outputs) and writes a model whose graph is
an ONNX ``Loop`` (opset 18, standard ops only) around the gradient graph: each iteration takes one
Adam step exactly as :mod:`couturier.services.latent.optimize` does (float64 state) and evaluates the
gradient graph at the new point. The gradient graph's nodes are inlined into the loop body (names
prefixed ``g/``); its weights stay initializers of the outer graph, which the body reads from the
outer scope. Every row of the batch is independent (axis 0 is Triton's batch axis), so requests
batch dynamically like the gradient models.

Evaluate, step, evaluate
------------------------
A call returns the state and every output of the gradient model *at the end point*, so a client
that streams progress shows the state after each call at once, and calls chain (the gradient at the
end point is an output and the next call's input). A run's first call sets ``evaluate_first``: the
start point is evaluated before the first step (the gradient input is ignored), so a run of N steps
is ceil(N / K) calls doing the N + 1 evaluations of N + 1 gradient-model calls step by step. A call
with ``steps = 0`` only evaluates the start point (a streaming client's step 0).

Signature (``P`` = the shape of the optimised parameter per row: ``(Dz,)`` or ``(n, Dz)``)

inputs
    ``<param> (B,*P) float64``   the parameter: ``w`` with ``z = tanh(w)`` (``inv_loop``,
                                 ``pref_loop``) or ``shifts`` (``shift_loop``)
    ``m, v (B,*P) float64``      Adam's first and second moments (zeros before the first step)
    ``<grad> (B,*P) float32``    the gradient model's gradient output at the start point
                                 (``grad_z`` w.r.t. z, not w; ``grad_shifts``); ignored with
                                 ``evaluate_first``
    ``step (B,1) int64``         Adam steps already taken (bias correction: the global step count)
    ``steps (B,1) int64``        steps to take in this call, per row (K)
    ``evaluate_first (B,1) bool``  evaluate the start point before the first step
    ``learning_rate (B,1) float64``
    ``radius (B,1) float64``     ``shift_loop`` only: the L2 ball of the shifts
    every other input of the gradient model, unchanged (``category``, ``target``, ``base_z`` ...)
outputs
    ``next_<param>, next_m, next_v (B,*P) float64`` and ``next_<grad> (B,*P) float32``: the state
    after the row's K steps (feed them back with ``step + K`` to chain);
    ``z`` float32: the latent at the end point (``tanh(next_w)``; ``shift_loop``: ``base_z +
    next_shifts``, ``(B,n,Dz)``);
    every other output of the gradient model (``value``, ``image`` ...) at the end point;
    ``value_history (B,T) float32``: the value at each point the call evaluated, in order (the
    start point first with ``evaluate_first``, then after each step; NaN past the row's own count;
    ``pref_loop`` also ``phi_history (B,T,K)``);
    ``inv_loop`` also: ``best_value (B,)``, ``best_step (B,) int64`` (absolute step number),
    ``best_z (B,Dz)``, ``best_image``: the best point this call evaluated (lowest value; the
    earliest step on ties).

Per-row step counts: the loop runs as many iterations as the row that evaluates most (at least
one); a row past its own count is left unchanged (its state, end-point outputs and best point are
masked, its history is NaN), so requests with different K can share a batch (the batch then takes as
long as the largest K, and the shorter rows' extra evaluations are wasted work).

Adam and constraints follow ``optimize.py``: ``beta1 = 0.9``, ``beta2 = 0.999``, ``eps = 1e-8`` (in
the metadata), float64, in ``optimize.Adam``'s operation order; tanh models ascend/descend ``w`` with
``grad_w = grad_z * (1 - z^2)``; ``shift_loop`` ascends the shifts, then projects each onto the box
around ``base_z`` (``clip(base + s, -1, 1) - base``) and the L2 ball of ``radius``. What couples the
rows of one request (the best restart of an inversion, the group's per-user weights of a TOP_K_SHARE
design) stays with the service.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from couturier.services.common.loop_specs import ADAM_BETA1, ADAM_BETA2, ADAM_EPS, LOOP_SPECS, ROW_INPUT_TYPES, LoopSpec
from couturier.services.common.model_metadata import METADATA_PREFIX

__all__ = [
    "LOOP_SPECS",
    "LoopSpec",
    "build_loop_model",
    "build_loop_models",
    "check_loop_model",
    "example_feeds",
    "reference_steps",
]

#: The generator's latent box (``optimize.LATENT_BOX``).
_BOX = (-1.0, 1.0)
#: The floor of a shift's norm before dividing by it (``optimize._project``).
_NORM_FLOOR = 1e-12
_PREFIX = "g/"
#: numpy types of the ONNX element types a history can hold.
_NP: dict[int, type] = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16}


# -- small graph helpers -------------------------------------------------------------------------


class _Graph:
    """Nodes and constants of one graph under construction, with unique names."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{self.scope}/{hint}_{self._n}"

    def op(self, op_type: str, inputs: Sequence[str], hint: str = "", **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value: np.ndarray | Sequence[int] | float, dtype: type = np.float64, hint: str = "c") -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim]


def _elem(value: onnx.ValueInfoProto) -> int:
    return int(value.type.tensor_type.elem_type)


def _info(name: str, elem: int, dims: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None if dims is None else list(dims))


def _rename_graph(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename every value of ``graph`` (and its subgraphs) found in ``mapping``, in place."""
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        if node.name:
            node.name = _PREFIX + node.name
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _rename_graph(sub, mapping)
    for values in (graph.input, graph.output, graph.value_info):
        for v in values:
            v.name = mapping.get(v.name, v.name)
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.initializer} | {v.name for v in graph.input}
    for node in graph.node:
        names.update(n for n in node.output if n)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _all_names(sub)
    return names


# -- the builder ---------------------------------------------------------------------------------


def build_loop_model(
    gradient_path: str | os.PathLike[str] | onnx.ModelProto,
    out_path: str | os.PathLike[str],
    spec: LoopSpec,
    *,
    name: str = "",
) -> Path:
    """Write the K-step loop model of the gradient model at ``gradient_path`` to ``out_path``.

    The direction (ascend or descend) comes from the gradient model's ``couturier.direction``
    metadata; every ``couturier.*`` entry is copied (the category list travels on), and
    ``couturier.loop.*`` entries record the gradient model, constraint and Adam's constants.
    Raises ValueError when the gradient model lacks what ``spec`` names, has a non-batch output
    dimension that no input determines, has no direction or an opset below 18.
    """
    source = (
        gradient_path
        if isinstance(gradient_path, onnx.ModelProto)
        else onnx.load(os.fspath(gradient_path), load_external_data=True)
    )
    opset = max((o.version for o in source.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 18:
        raise ValueError(f"{spec.gradient_model} uses default-domain opset {opset}; loop models need >= 18")
    io = _GradientIO(source, spec)
    outer, body = _Graph("loop"), _Graph("body")
    plan = _LoopPlan(spec, io, outer, body)
    body_graph, initial = plan.body_graph()
    stacks = [outer.name(f"{h}_stack") for h in spec.history]
    outer.nodes.append(
        helper.make_node(
            "Loop",
            [plan.trip, plan.cond, *spec.state_inputs, *initial],
            [*spec.state_outputs, *(v.name for v in io.aux), *spec.best_outputs, *stacks],
            name=outer.name("loop"),
            body=body_graph,
        )
    )
    for h, stack in zip(spec.history, stacks, strict=True):  # (Kmax,B,...) -> (B,Kmax,...)
        rank = len(_dims(io.outputs[h]))
        outer.nodes.append(
            helper.make_node(
                "Transpose", [stack], [spec.history_output(h)], perm=[1, 0, *range(2, rank + 1)], name=f"{h}_history"
            )
        )
    next_param = spec.state_outputs[0]
    z64 = (
        outer.op("Tanh", [next_param], "z64") if spec.constraint == "tanh" else outer.op("Add", [plan.base, next_param])
    )
    outer.nodes.append(helper.make_node("Cast", [z64], ["z"], to=_F32, name="z"))

    graph = helper.make_graph(
        outer.nodes, name or f"{spec.gradient_model}_loop", io.loop_inputs(), io.loop_outputs(), outer.initializers
    )
    model = helper.make_model(graph, opset_imports=list(source.opset_import), functions=list(source.functions))
    model.ir_version = source.ir_version
    for key, value in io.metadata.items():
        if key.startswith(METADATA_PREFIX):
            model.metadata_props.add(key=key, value=value)
    loop_meta = {
        "loop.gradient_model": spec.gradient_model,
        "loop.parameter": spec.parameter,
        "loop.constraint": spec.constraint,
        "loop.adam": f"beta1={ADAM_BETA1} beta2={ADAM_BETA2} eps={ADAM_EPS}",
    }
    for key, value in loop_meta.items():
        model.metadata_props.add(key=METADATA_PREFIX + key, value=value)
    onnx.checker.check_model(model, full_check=True)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, os.fspath(out), save_as_external_data=False)
    return out


_F64, _F32, _I64, _BOOL = TensorProto.DOUBLE, TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


class _GradientIO:
    """The gradient model's inputs and outputs as the loop model sees them, checked against ``spec``."""

    def __init__(self, source: onnx.ModelProto, spec: LoopSpec) -> None:
        self.spec = spec
        self.metadata = {p.key: p.value for p in source.metadata_props}
        direction = self.metadata.get(METADATA_PREFIX + "direction", "")
        if direction not in ("maximise", "minimise"):
            raise ValueError(
                f"{spec.gradient_model}: metadata {METADATA_PREFIX}direction is {direction!r}, not maximise/minimise"
            )
        self.maximise = direction == "maximise"
        self.graph = onnx.GraphProto()
        self.graph.CopyFrom(source.graph)
        inits = {i.name for i in source.graph.initializer}
        self.inputs = {v.name: _copy(v) for v in source.graph.input if v.name not in inits}
        self.outputs = {v.name: _copy(v) for v in source.graph.output}
        needed_in = [spec.variable] + ([spec.base] if spec.constraint == "ball" else [])
        needed_out = ["value", spec.gradient, *spec.best, *spec.history]
        for what, names, have in (("input", needed_in, self.inputs), ("output", needed_out, self.outputs)):
            missing = sorted({n for n in names if n not in have})
            if missing:
                raise ValueError(f"{spec.gradient_model} has no {what} {missing}; it has {sorted(have)}")
        self.variable = self.inputs[spec.variable]
        self.others = [v for n, v in self.inputs.items() if n != spec.variable]
        self.aux = [v for n, v in self.outputs.items() if n != spec.gradient]
        own = {*spec.state_inputs, *spec.row_inputs}
        clash = own & {v.name for v in self.others}
        if clash:
            raise ValueError(f"{spec.gradient_model} inputs {sorted(clash)} clash with the loop model's own inputs")
        taken = own | set(self.inputs) | {"z", *spec.state_outputs, *spec.best_outputs}
        clash = taken & {v.name for v in self.aux}
        if clash:
            raise ValueError(f"{spec.gradient_model} outputs {sorted(clash)} clash with the loop model's names")

    def rank(self, output: str) -> int:
        return len(_dims(self.outputs[output]))

    def loop_inputs(self) -> list[onnx.ValueInfoProto]:
        spec, state = self.spec, ["batch", *_dims(self.variable)[1:]]
        param, m, v, grad = spec.state_inputs
        infos = [_info(param, _F64, state), _info(m, _F64, state), _info(v, _F64, state)]
        infos.append(_info(grad, _elem(self.outputs[spec.gradient]), _dims(self.outputs[spec.gradient])))
        for row in spec.row_inputs:
            elem = {"int64": _I64, "bool": _BOOL, "float64": _F64}[ROW_INPUT_TYPES[row]]
            infos.append(_info(row, elem, ["batch", 1]))
        return infos + [_copy(v) for v in self.others]

    def loop_outputs(self) -> list[onnx.ValueInfoProto]:
        spec, state = self.spec, ["batch", *_dims(self.variable)[1:]]
        gradient = self.outputs[spec.gradient]
        infos = [_info(n, _F64, state) for n in spec.state_outputs[:3]]
        infos.append(_info(spec.state_outputs[3], _elem(gradient), _dims(gradient)))
        infos += [_copy(v) for v in self.aux]
        if spec.best:
            value = self.outputs["value"]
            infos += [
                _info("best_value", _elem(value), _dims(value)),
                _info("best_step", _I64, ["batch"]),
                _info(f"best_{spec.variable}", _F32, state),
            ]
            infos += [_info(f"best_{o}", _elem(self.outputs[o]), _dims(self.outputs[o])) for o in spec.best]
        for h in spec.history:
            out = self.outputs[h]
            infos.append(_info(spec.history_output(h), _elem(out), ["batch", "steps_max", *_dims(out)[1:]]))
        infos.append(_info("z", _F32, state))
        return infos


class _LoopPlan:
    """The loop body and the outer-graph values it reads (trip count, per-rank views, initial values)."""

    def __init__(self, spec: LoopSpec, io: _GradientIO, outer: _Graph, body: _Graph) -> None:
        self.spec, self.io, self.outer, self.body = spec, io, outer, body
        self._columns: dict[tuple[str, int], str] = {}
        param = spec.state_inputs[0]
        self.batch = outer.op("Shape", [param], "batch", start=0, end=1)
        # a row evaluates in iterations [0, n_eval) and steps in [first, end): first = 1 evaluates the
        # start point before the first step; steps = 0 (and first = 0) still evaluates the start point
        self.first = outer.op("Cast", ["evaluate_first"], "first", to=_I64)
        self.end = outer.op("Add", ["steps", self.first], "end")
        self.n_eval = outer.op("Max", [self.end, outer.const(1, np.int64, "one")], "n_eval")
        self.trip = outer.op("ReduceMax", [self.n_eval], "trip", keepdims=0)
        self.cond = outer.const(True, np.bool_, "true")
        self.rank = len(_dims(io.variable))
        self.base = ""
        if spec.constraint == "ball":
            base = outer.op("Cast", [spec.base], "base64", to=_F64)
            lo, hi = outer.const(_BOX[0], hint="lo"), outer.const(_BOX[1], hint="hi")
            base = outer.op("Min", [outer.op("Max", [base, lo]), hi], "base_box")
            self.base = (
                outer.op("Unsqueeze", [base, outer.const([1], np.int64, "axis")], "base3") if self.rank == 3 else base
            )

    # -- outer-graph helpers

    def column(self, row_input: str, rank: int, flat: bool = False) -> str:
        """A ``(B,1)`` row input as ``(B,1,...,1)`` of ``rank`` (``flat``: as ``(B,)``)."""
        shape = [-1] if flat else [-1] + [1] * (rank - 1)
        if not flat and rank == 2:
            return row_input
        key = (row_input, len(shape))
        if key not in self._columns:
            self._columns[key] = self.outer.op(
                "Reshape", [row_input, self.outer.const(shape, np.int64, "shape")], "row"
            )
        return self._columns[key]

    def dim(self, dim: int | str) -> str:
        """A ``(1,)`` int64 tensor holding a non-batch dimension of an output."""
        if isinstance(dim, int) and dim > 0:
            return self.outer.const([dim], np.int64, "dim")
        for v in [self.io.variable, *self.io.others]:
            for axis, d in enumerate(_dims(v)):
                if d == dim and axis > 0:
                    src = self.spec.state_inputs[0] if v is self.io.variable else v.name
                    return self.outer.op("Shape", [src], "dim", start=axis, end=axis + 1)
        raise ValueError(f"{self.spec.gradient_model}: no input determines output dimension {dim!r}")

    def filled(self, value: onnx.ValueInfoProto, fill: float, elem: int | None = None) -> str:
        """``value``'s shape (batch from the parameter) filled with ``fill``."""
        dims = _dims(value)
        shape = self.batch
        if len(dims) > 1:
            shape = self.outer.op("Concat", [self.batch, *(self.dim(d) for d in dims[1:])], "shape", axis=0)
        elem = _elem(value) if elem is None else elem
        fill_value = int(fill) if elem == _I64 else fill
        return self.outer.op(
            "ConstantOfShape", [shape], "fill", value=helper.make_tensor("fill", elem, [1], [fill_value])
        )

    # -- the body

    def body_graph(self) -> tuple[onnx.GraphProto, list[str]]:
        """The loop body and the initial values of the carried outputs (aux outputs, best point)."""
        spec, io, body = self.spec, self.io, self.body
        nan = float("nan")
        i, cond_in = "body/i", "body/cond"
        c_param, c_m, c_v, c_grad = (f"body/{n}" for n in ("param", "m", "v", "grad"))
        c_aux = [f"body/prev/{v.name}" for v in io.aux]
        c_best = [f"body/{n}" for n in spec.best_outputs]
        initial = [self.filled(v, nan) for v in io.aux]
        if spec.best:
            value = io.outputs["value"]
            initial += [
                self.filled(value, -math.inf if io.maximise else math.inf),
                self.filled(value, -1, _I64),
                self.filled(io.variable, nan),
                *(self.filled(io.outputs[o], nan) for o in spec.best),
            ]

        i1 = body.op("Add", [i, body.const(1, np.int64, "one")], "i1")
        ranks = {self.rank, 1} | {len(_dims(v)) for v in io.aux}
        stepping = {
            r: body.op(
                "And",
                [
                    body.op("GreaterOrEqual", [i, self.column(self.first, r, flat=r == 1)]),
                    body.op("Less", [i, self.column(self.end, r, flat=r == 1)]),
                ],
                f"stepping{r}",
            )
            for r in sorted(ranks)
        }
        active = {
            r: body.op("Less", [i, self.column(self.n_eval, r, flat=r == 1)], f"active{r}") for r in sorted(ranks)
        }
        # steps taken after this iteration's step: i + 1 - first (bias correction and best_step count them)
        taken = body.op("Sub", [i1, self.column(self.first, 1, flat=True)], "taken")

        # Adam, in the operation order of optimize.Adam (float64)
        taken_r = (
            taken
            if self.rank == 1
            else body.op("Reshape", [taken, body.const([-1] + [1] * (self.rank - 1), np.int64, "shape")])
        )
        t = body.op("Cast", [body.op("Add", [self.column("step", self.rank), taken_r], "t_int")], "t", to=_F64)
        grad = body.op("Cast", [c_grad], "grad64", to=_F64)
        one = body.const(1.0, hint="one")
        if spec.constraint == "tanh":
            z_old = body.op("Tanh", [c_param], "z_old")
            grad = body.op("Mul", [grad, body.op("Sub", [one, body.op("Mul", [z_old, z_old])], "dtanh")], "grad_w")
        b1, b2 = body.const(ADAM_BETA1, hint="beta1"), body.const(ADAM_BETA2, hint="beta2")
        m_new = body.op(
            "Add", [body.op("Mul", [b1, c_m]), body.op("Mul", [body.const(1 - ADAM_BETA1, hint="c_beta1"), grad])], "m1"
        )
        g2 = body.op("Mul", [body.op("Mul", [body.const(1 - ADAM_BETA2, hint="c_beta2"), grad]), grad], "g2")
        v_new = body.op("Add", [body.op("Mul", [b2, c_v]), g2], "v1")
        m_hat = body.op("Div", [m_new, body.op("Sub", [one, body.op("Pow", [b1, t])])], "m_hat")
        v_hat = body.op("Div", [v_new, body.op("Sub", [one, body.op("Pow", [b2, t])])], "v_hat")
        sqrt_eps = body.op("Add", [body.op("Sqrt", [v_hat]), body.const(ADAM_EPS, hint="eps")])
        update = body.op("Div", [body.op("Mul", [self.column("learning_rate", self.rank), m_hat]), sqrt_eps], "update")
        param = body.op("Add" if io.maximise else "Sub", [c_param, update], "param1")
        if spec.constraint == "ball":  # optimize._project: box around the base first, then the L2 ball
            lo, hi = body.const(_BOX[0], hint="lo"), body.const(_BOX[1], hint="hi")
            moved = body.op("Add", [self.base, param])
            boxed = body.op("Sub", [body.op("Min", [body.op("Max", [moved, lo]), hi]), self.base], "boxed")
            squares = body.op(
                "ReduceSum", [body.op("Mul", [boxed, boxed]), body.const([-1], np.int64, "axis")], keepdims=1
            )
            norm = body.op("Max", [body.op("Sqrt", [squares], "norm"), body.const(_NORM_FLOOR, hint="floor")])
            scale = body.op("Min", [one, body.op("Div", [self.column("radius", self.rank), norm])], "scale")
            param = body.op("Mul", [boxed, scale], "projected")
        act = stepping[self.rank]
        state_out = [
            body.op("Where", [act, param, c_param], "param_out"),
            body.op("Where", [act, m_new, c_m], "m_out"),
            body.op("Where", [act, v_new, c_v], "v_out"),
        ]
        x64 = body.op("Tanh", [state_out[0]], "z") if spec.constraint == "tanh" else state_out[0]
        x = body.op("Cast", [x64], "x", to=_F32)

        # the gradient graph, inlined: its other inputs read the loop model's inputs, the variable reads x
        graph = io.graph
        mapping = {n: _PREFIX + n for n in _all_names(graph)}
        mapping.update({v.name: v.name for v in io.others})
        mapping[spec.variable] = x
        _rename_graph(graph, mapping)
        self.outer.initializers.extend(graph.initializer)
        body.nodes.extend(graph.node)
        g_out = {n: mapping[n] for n in io.outputs}

        state_out.append(body.op("Where", [active[self.rank], g_out[spec.gradient], c_grad], "grad_out"))
        aux_out = [
            body.op("Where", [active[len(_dims(v))], g_out[v.name], prev], f"{v.name}_out")
            for v, prev in zip(io.aux, c_aux, strict=True)
        ]
        best_out: list[str] = []
        if spec.best:
            improves = body.op("Greater" if io.maximise else "Less", [g_out["value"], c_best[0]])
            better = body.op("And", [active[1], improves], "better")
            so_far = body.op("Min", [taken, self.column("steps", 1, flat=True)], "so_far")
            step1 = body.op("Add", [self.column("step", 1, flat=True), so_far], "abs_step")
            best_out += [
                body.op("Where", [better, g_out["value"], c_best[0]], "best_value"),
                body.op("Where", [better, step1, c_best[1]], "best_step"),
            ]
            sources = [(x, self.rank), *((g_out[o], io.rank(o)) for o in spec.best)]
            for (src, rank), prev in zip(sources, c_best[2:], strict=True):
                mask = better
                if rank > 1:
                    mask = body.op("Reshape", [better, body.const([-1] + [1] * (rank - 1), np.int64, "shape")])
                best_out.append(body.op("Where", [mask, src, prev], "best"))
        history = [
            body.op(
                "Where",
                [active[io.rank(h)], g_out[h], body.const(nan, _NP[_elem(io.outputs[h])], "nan")],
                f"{h}_history",
            )
            for h in spec.history
        ]
        cond_out = body.op("Identity", [cond_in], "cond_out")

        carried = [(c_param, _F64), (c_m, _F64), (c_v, _F64), (c_grad, _elem(io.outputs[spec.gradient]))]
        carried += [(n, _elem(v)) for n, v in zip(c_aux, io.aux, strict=True)]
        if spec.best:
            carried += [(c_best[0], _elem(io.outputs["value"])), (c_best[1], _I64), (c_best[2], _F32)]
            carried += [(n, _elem(io.outputs[o])) for n, o in zip(c_best[3:], spec.best, strict=True)]
        outputs = [*state_out, *aux_out, *best_out]
        graph_proto = helper.make_graph(
            body.nodes,
            "loop_body",
            [_info(i, _I64, []), _info(cond_in, _BOOL, [])] + [_info(n, e, None) for n, e in carried],
            [_info(cond_out, _BOOL, [])]
            + [_info(o, e, None) for o, (_, e) in zip(outputs, carried, strict=True)]
            + [_info(h, _elem(io.outputs[n]), None) for h, n in zip(history, spec.history, strict=True)],
            initializer=body.initializers,
            value_info=list(graph.value_info),
        )
        return graph_proto, initial


def _copy(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    return out


def build_loop_models(
    gradient_paths: Mapping[str, str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> dict[str, Path]:
    """The loop model of every gradient model in ``gradient_paths`` (name -> path), written as
    ``<out_dir>/<loop name>.onnx``; returns loop name -> path."""
    paths: dict[str, Path] = {}
    for loop_name, spec in LOOP_SPECS.items():
        if spec.gradient_model in gradient_paths:
            paths[loop_name] = build_loop_model(
                gradient_paths[spec.gradient_model], Path(out_dir) / f"{loop_name}.onnx", spec, name=loop_name
            )
    return paths


# -- checking a loop model against the reference optimiser ---------------------------------------


def _session(path: str | os.PathLike[str], threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"])


def _run(session: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def example_feeds(
    gradient_path: str | os.PathLike[str], spec: LoopSpec, *, batch: int = 3, size: int = 3, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A random start (the loop parameter, float64) and random other inputs of the gradient model:
    dynamic axes get ``batch`` (axis 0) or ``size``; ``category`` inputs are one-hot rows; latents lie
    inside the box."""
    model = onnx.load(os.fspath(gradient_path), load_external_data=False)
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = _dims(value)
        shape = tuple(batch if a == 0 else (d if isinstance(d, int) and d > 0 else size) for a, d in enumerate(dims))
        if value.name == "category":
            feeds[value.name] = np.eye(shape[1], dtype=np.float32)[rng.integers(0, shape[1], shape[0])]
        else:
            feeds[value.name] = rng.uniform(-0.8, 0.8, shape).astype(np.float32)
    start = feeds.pop(spec.variable).astype(np.float64)
    if spec.constraint == "tanh":
        start = np.arctanh(start)
    else:
        start *= 0.2
    return start, feeds


def reference_steps(
    gradient: Any,
    spec: LoopSpec,
    start: np.ndarray,
    feeds: Mapping[str, np.ndarray],
    *,
    steps: int,
    learning_rate: float,
    radius: float = 1.0,
    maximise: bool = True,
) -> tuple[np.ndarray, Any, list[dict[str, np.ndarray]]]:
    """``steps`` steps of the reference optimiser (``optimize.Adam``, the tanh box or
    ``optimize._project`` per row) over an onnxruntime session of the gradient model. Returns the final
    parameter, the Adam object (``m``, ``v``) and the gradient model's outputs at every point (start
    first)."""
    from couturier.services.latent.optimize import Adam, _project

    param = np.array(start, np.float64)
    adam = Adam(learning_rate, beta1=ADAM_BETA1, beta2=ADAM_BETA2, eps=ADAM_EPS, maximise=maximise)
    base = np.clip(np.asarray(feeds[spec.base], np.float64), *_BOX) if spec.constraint == "ball" else None

    def evaluate(p: np.ndarray) -> dict[str, np.ndarray]:
        x = np.tanh(p) if spec.constraint == "tanh" else p
        return _run(gradient, {**feeds, spec.variable: x.astype(np.float32)})

    points = [evaluate(param)]
    for _ in range(steps):
        grad = points[-1][spec.gradient].astype(np.float64)
        if spec.constraint == "tanh":
            z = np.tanh(param)
            param = adam.step(param, grad * (1.0 - z * z))
        else:
            assert base is not None
            stepped = adam.step(param, grad)
            param = np.stack([_project(base[b], stepped[b], radius) for b in range(param.shape[0])])
        points.append(evaluate(param))
    return param, adam, points


def check_loop_model(
    gradient_path: str | os.PathLike[str],
    loop_path: str | os.PathLike[str],
    spec: LoopSpec,
    *,
    steps: int = 5,
    batch: int = 3,
    seed: int = 0,
    threads: int | None = None,
    evaluate_first: bool = True,
) -> dict[str, Any]:
    """The loop model against the reference optimiser over its gradient model (onnxruntime, random
    inputs from :func:`example_feeds`). Three measures:

    * ``step_max_abs_err``: one step from the gradient model's gradient, against ``optimize.Adam``
      (and the constraint): the optimiser itself, equal to float64 rounding;
    * ``end_*``: the loop's outputs at the end of ``steps`` steps against the gradient model evaluated
      at that same point (``end_value_max_rel_err``, the per-sample relative error of the gradient:
      ``end_grad_rel_err_median`` / ``_max``): the inlined graph, equal to float32 rounding;
    * ``param_max_abs_err``, ``m_max_rel_err``, ``v_max_rel_err``, ``grad_max_rel_err``,
      ``value_max_rel_err``, ``history_max_rel_err``: one call of ``steps`` steps against ``steps``
      reference steps (``evaluate_first``: the call evaluates the start point, as a run's first call
      does). Float32 differences of the gradient grow along a trajectory, and more so in badly
      conditioned (barely trained) networks, so these are reported, not judged.

    ``ok``: the step within 1e-9 (relative to the parameter's magnitude), the end value within 1e-4 and
    the median gradient error within 1e-3 (relative)."""
    meta = {p.key: p.value for p in onnx.load(os.fspath(gradient_path), load_external_data=False).metadata_props}
    maximise = meta.get(METADATA_PREFIX + "direction") == "maximise"
    start, feeds = example_feeds(gradient_path, spec, batch=batch, seed=seed)
    rate, radius = (0.05, 1.0) if spec.constraint == "tanh" else (0.02, 1.0)
    gradient, loop = _session(gradient_path, threads), _session(loop_path, threads)
    param, adam, points = reference_steps(
        gradient, spec, start, feeds, steps=steps, learning_rate=rate, radius=radius, maximise=maximise
    )
    rows = start.shape[0]

    def call(steps: int, first: bool) -> dict[str, np.ndarray]:
        loop_feeds = {
            spec.state_inputs[0]: start,
            "m": np.zeros_like(start),
            "v": np.zeros_like(start),
            spec.gradient: np.zeros(start.shape, np.float32) if first else points[0][spec.gradient],
            "step": np.zeros((rows, 1), np.int64),
            "steps": np.full((rows, 1), steps, np.int64),
            "evaluate_first": np.full((rows, 1), first, np.bool_),
            "learning_rate": np.full((rows, 1), rate),
            **feeds,
        }
        if spec.constraint == "ball":
            loop_feeds["radius"] = np.full((rows, 1), radius)
        return _run(loop, loop_feeds)

    def rel(a: np.ndarray, b: np.ndarray) -> float:  # max abs error over the reference's largest magnitude
        return float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-30)

    one_param = reference_steps(
        gradient, spec, start, feeds, steps=1, learning_rate=rate, radius=radius, maximise=maximise
    )[0]
    one = call(1, False)[spec.state_outputs[0]]
    got = call(steps, evaluate_first)
    end_param = got[spec.state_outputs[0]]
    end_x = np.tanh(end_param) if spec.constraint == "tanh" else end_param
    at_end = _run(gradient, {**feeds, spec.variable: end_x.astype(np.float32)})
    grad_err = np.linalg.norm((got[spec.state_outputs[3]] - at_end[spec.gradient]).reshape(rows, -1), axis=1)
    grad_err /= np.maximum(np.linalg.norm(at_end[spec.gradient].reshape(rows, -1), axis=1), 1e-30)
    values = np.stack([p["value"] for p in points[0 if evaluate_first else 1 :]], axis=1)
    report: dict[str, Any] = {
        "steps": steps,
        "batch": rows,
        "step_max_abs_err": float(np.abs(one - one_param).max()),
        "end_value_max_rel_err": rel(got["value"], at_end["value"]),
        "end_grad_rel_err_median": float(np.median(grad_err)),
        "end_grad_rel_err_max": float(grad_err.max()),
        "param_max_abs_err": float(np.abs(end_param - param).max()),
        "m_max_rel_err": rel(got["next_m"], adam.m),
        "v_max_rel_err": rel(got["next_v"], adam.v),
        "grad_max_rel_err": rel(got[spec.state_outputs[3]], points[-1][spec.gradient]),
        "value_max_rel_err": rel(got["value"], points[-1]["value"]),
        "history_max_rel_err": rel(got["value_history"], values),
    }
    report["ok"] = bool(
        report["step_max_abs_err"] <= 1e-9 * max(1.0, float(np.abs(one_param).max()))
        and report["end_value_max_rel_err"] <= 1e-4
        and report["end_grad_rel_err_median"] <= 1e-3
    )
    return report
