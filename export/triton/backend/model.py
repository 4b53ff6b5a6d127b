"""Triton Python-based backend named ``onnxruntime``: runs ``<model>/<version>/model.onnx``.

Stands in locally for NGC Triton's native onnxruntime backend, so one standard model repository
serves both. For a batched model (``max_batch_size`` >= 1) requests the dynamic batcher groups
are concatenated along the batch axis, run once and split back; an unbatched model
(``max_batch_size: 0``, inputs that need not share dim 0) runs every request on its own. Runs
inside the Python-backend stub; imports only numpy, onnxruntime and ``triton_python_backend_utils``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

MODEL_FILENAME = "model.onnx"


def _int_parameter(config: dict[str, Any], key: str) -> int:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return int(value) if value.strip().lstrip("-").isdigit() else 0


def _providers(kind: str, device_id: int) -> list[Any]:
    if kind == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class TritonPythonModel:
    """One model instance: an onnxruntime session over the version's ``model.onnx``."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.batched = int(config.get("max_batch_size", 0) or 0) > 0
        self.version = args["model_version"]
        path = os.path.join(args["model_repository"], self.version, MODEL_FILENAME)
        options = ort.SessionOptions()
        options.intra_op_num_threads = _int_parameter(config, "intra_op_thread_count")
        options.inter_op_num_threads = _int_parameter(config, "inter_op_thread_count")
        kind = args.get("model_instance_kind", "CPU")
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        self.session = ort.InferenceSession(path, sess_options=options, providers=_providers(kind, device_id))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        declared = [t["name"] for t in config.get("input", [])]
        if sorted(declared) != sorted(self.input_names):
            raise pb_utils.TritonModelException(
                f"config inputs {declared} do not match {path} inputs {self.input_names}"
            )
        pb_utils.Logger.log_info(
            f"couturier onnxruntime backend: model {self.model_name} version {self.version} "
            f"instance {args.get('model_instance_name', '?')} runs on {self.session.get_providers()[0]} "
            f"with intra_op_thread_count {options.intra_op_num_threads or 'default'} "
            f"(onnxruntime {ort.__version__}, numpy {np.__version__})"
        )

    def _read(self, request: Any) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            arrays[name] = tensor.as_numpy()
        return arrays

    def _requested(self, request: Any) -> list[str]:
        names = list(request.requested_output_names())
        return names or self.output_names

    def _execute_each(self, requests: list[Any]) -> list[Any]:
        """Unbatched model: one session run per request, outputs as the model returns them."""
        responses: list[Any] = []
        for request in requests:
            try:
                feed = self._read(request)
                wanted = self._requested(request)
                results = self.session.run(wanted, feed)
                tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r)) for n, r in zip(wanted, results)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # answer this request, keep the others
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer every request; for a batched model requests with matching inner shapes share one run."""
        if not self.batched:
            return self._execute_each(requests)
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            try:
                arrays = self._read(request)
            except Exception as exc:  # answer this request, keep the others
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in arrays.items())
            groups.setdefault(key, []).append((index, arrays))

        for members in groups.values():
            wanted = sorted({n for i, _ in members for n in self._requested(requests[i])})
            try:
                if len(members) == 1:
                    feed = members[0][1]
                else:
                    feed = {n: np.concatenate([arrays[n] for _, arrays in members]) for n in self.input_names}
                results = dict(zip(wanted, self.session.run(wanted, feed)))
            except Exception as exc:
                for index, _ in members:
                    responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            start = 0
            for index, arrays in members:
                size = len(next(iter(arrays.values())))
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(results[name][start : start + size]))
                    for name in self._requested(requests[index])
                ]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses

    def finalize(self) -> None:
        pb_utils.Logger.log_info(
            f"couturier onnxruntime backend: model {self.model_name} version {self.version} unloaded"
        )
        self.session = None
