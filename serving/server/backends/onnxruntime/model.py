"""A Python-based Triton backend named "onnxruntime".

Installed as ``<backend-dir>/onnxruntime/model.py``, Triton uses it for every model
whose config says ``backend: "onnxruntime"``: the same model repository that a stock
Triton container serves with its native ONNX Runtime backend. It runs the version's
ONNX file with onnxruntime (CUDA or TensorRT provider on GPU instances), honours the
config's inputs and outputs, and batches requests of equal shape together.
Every integer input is range-checked against the model's ``input_ranges`` parameter,
and one bad request never fails the others batched with it.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

NUMPY_TYPES = {
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_BOOL": np.bool_,
}


def _parameter(config, key, default=None):
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _input_ranges(config):
    """Returns {input name: (low, high)}, the half-open range of each integer input the model accepts."""
    text = _parameter(config, "input_ranges")
    if text:
        return {name: (int(low), int(high)) for name, (low, high) in json.loads(text).items()}
    # Repositories exported before input_ranges existed only recorded the vocabulary size.
    vocab = _parameter(config, "vocab_size")
    return {"input_ids": (0, int(vocab))} if vocab else {}


def _check_range(name, array, low, high):
    """Raises ValueError naming the input, its allowed range and the values received outside it."""
    if not array.size or not np.issubdtype(array.dtype, np.integer):
        return
    bad = array[(array < low) | (array >= high)]
    if bad.size:
        values = np.unique(bad)
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise ValueError(
            f"{name} must lie in [{low}, {high}); received {shown} ({bad.size} of {array.size} values out of range)"
        )


def _error_response(error):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error)))


def _providers(config, kind, device_id):
    if kind != "GPU":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    providers = []
    accelerators = config.get("optimization", {}).get("execution_accelerators", {}).get("gpu_execution_accelerator", [])
    for accelerator in accelerators:
        if accelerator.get("name") == "tensorrt" and "TensorrtExecutionProvider" in available:
            options = {"device_id": device_id}
            if accelerator.get("parameters", {}).get("precision_mode") == "FP16":
                options["trt_fp16_enable"] = True
            providers.append(("TensorrtExecutionProvider", options))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
    return providers + ["CPUExecutionProvider"]


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        filename = self.config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        options = ort.SessionOptions()
        threads = _parameter(self.config, "intra_op_threads")
        if threads:
            options.intra_op_num_threads = int(threads)
        # Spinning threads keep a core busy after each run: fast for back-to-back requests, costly when
        # the server's other threads or other instances need that core.
        spinning = _parameter(self.config, "allow_spinning")
        if spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        providers = _providers(self.config, args["model_instance_kind"], int(args["model_instance_device_id"]))
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        self.inputs = [
            (spec["name"], NUMPY_TYPES[spec["data_type"]], len(spec["dims"])) for spec in self.config["input"]
        ]
        self.outputs = [spec["name"] for spec in self.config["output"]]
        self.batched = self.config.get("max_batch_size", 0) > 0
        self.ranges = _input_ranges(self.config)
        self.max_positions = json.loads(_parameter(self.config, "deployment", "{}")).get("max_positions") or 0

    def _read(self, request):
        arrays = {}
        for name, dtype, rank in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input '{name}' is missing")
            array = tensor.as_numpy()
            if array.dtype != dtype or array.ndim != rank + int(self.batched):
                raise ValueError(
                    f"input '{name}' must be {np.dtype(dtype).name} with rank {rank + int(self.batched)}, "
                    f"got {array.dtype} with shape {list(array.shape)}"
                )
            if self.batched and array.ndim == 2:
                self._check_length(name, array.shape[1])
            if name in self.ranges:
                _check_range(name, array, *self.ranges[name])
            arrays[name] = array
        shapes = {a.shape for a in arrays.values()}
        # Batched models (text classifiers) take inputs of one shape; unbatched ones (a decoder step with its cache) any.
        if self.batched and len(shapes) > 1:
            raise ValueError(f"inputs must share one shape, got {sorted(map(list, shapes))}")
        return arrays

    def _check_length(self, name, tokens):
        # Caught here, the error names the input; inside onnxruntime it would be an opaque index error.
        if tokens == 0:
            raise ValueError(f"input '{name}' holds no tokens: send at least one per row")
        if self.max_positions and tokens > self.max_positions:
            raise ValueError(
                f"input '{name}' holds {tokens} tokens per row, more than the model's "
                f"{self.max_positions} positions: truncate the sequences"
            )

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for index, request in enumerate(requests):
            try:
                arrays = self._read(request)
            except Exception as error:  # whatever one request holds, it must not fail the others
                responses[index] = _error_response(error)
                continue
            key = tuple((name, array.shape[1:]) for name, array in arrays.items()) if self.batched else index
            groups.setdefault(key, []).append((index, arrays))
        for members in groups.values():
            self._run_group(members, requests, responses)
        return responses

    def _run_group(self, members, requests, responses):
        # Requests of equal shape run as one batch, as Triton's native backend would.
        names = [name for name, _, _ in self.inputs]
        feed = {name: np.concatenate([arrays[name] for _, arrays in members]) for name in names}
        asked = {index: set(requests[index].requested_output_names()) or set(self.outputs) for index, _ in members}
        # Only the outputs some request asked for are computed and copied: a language model's logits are large.
        outputs = [name for name in self.outputs if any(name in wanted for wanted in asked.values())]
        try:
            results = self.session.run(outputs, feed)
        except Exception as error:  # onnxruntime raises its own exception types
            if len(members) == 1:
                responses[members[0][0]] = _error_response(error)
                return
            # Run each request alone so that only the one that fails gets the error.
            for member in members:
                self._run_group([member], requests, responses)
            return
        start = 0
        for index, arrays in members:
            size = len(next(iter(arrays.values())))
            tensors = [
                pb_utils.Tensor(name, result[start : start + size])
                for name, result in zip(outputs, results)
                if name in asked[index]
            ]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += size

    def finalize(self):
        self.session = None
