"""Triton model configurations, built with Triton's own protobuf schema (no string templates)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from exporter.atomic import atomic_write_text
from exporter.errors import HeadpruneError
from exporter.triton.layout import MODEL_FILE

INT64, FP32, STRING = pb.TYPE_INT64, pb.TYPE_FP32, pb.TYPE_STRING


@dataclass(frozen=True)
class DeploymentOptions:
    """How a model is deployed: batching, instances, device kind, accelerator."""

    max_batch_size: int = 64
    instances: int = 1
    kind: str = "cpu"
    queue_delay_us: int = 100
    tensorrt: bool = False
    max_length: int = 128
    threads: int = 0  # ONNX Runtime intra-op threads per instance; 0 = its default (one per physical core)
    spinning: bool = True  # ONNX Runtime threads spin between runs (its default)
    # Overload protection, off unless asked for: beyond this many waiting requests Triton refuses new ones at once
    # (0: no limit) ...
    max_queue_size: int = 0
    # ... and a request that waited this long without starting is refused (0: waits forever).
    queue_timeout_ms: int = 0

    def __post_init__(self):
        if (
            self.max_batch_size < 1
            or self.instances < 1
            or min(self.queue_delay_us, self.threads, self.max_queue_size, self.queue_timeout_ms) < 0
        ):
            raise HeadpruneError(
                "`max_batch_size` and `instances` must be >= 1; `queue_delay_us`, `threads`, "
                "`max_queue_size` and `queue_timeout_ms` >= 0",
                "pass positive values",
            )
        if self.kind not in ("cpu", "gpu"):
            raise HeadpruneError(f"instance kind '{self.kind}' is unknown", "use cpu or gpu")
        if self.tensorrt and self.kind != "gpu":
            raise HeadpruneError("`tensorrt` needs GPU instances", "set `kind` to gpu")


def _tensor(cls, name: str, data_type: int, dims: list[int]):
    return cls(name=name, data_type=data_type, dims=dims)


def _parameters(config: pb.ModelConfig, values: dict[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value


def _instances(config: pb.ModelConfig, options: DeploymentOptions) -> None:
    kind = pb.ModelInstanceGroup.KIND_GPU if options.kind == "gpu" else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.append(pb.ModelInstanceGroup(count=options.instances, kind=kind))


def apply_batching(config: pb.ModelConfig, options: DeploymentOptions) -> None:
    """Sets the config's dynamic batching (delay, and the queue policy when ``options`` limit the queue)."""
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = options.queue_delay_us
    # Any queue policy stops Triton's (2.51) batcher from handing the next batch to a busy instance ahead of time;
    # it then waits for the instance instead, misses the instance's wake-up and holds the request 500 ms
    # (tests/test_queue_policy.py). So the policy is written only when a limit is asked for.
    if options.max_queue_size or options.queue_timeout_ms:
        batching.default_queue_policy.CopyFrom(
            pb.ModelQueuePolicy(
                timeout_action=pb.ModelQueuePolicy.REJECT,
                max_queue_size=options.max_queue_size,
                default_timeout_microseconds=options.queue_timeout_ms * 1000,
                allow_timeout_override=True,
            )
        )


def apply_serving_settings(config: pb.ModelConfig, options: DeploymentOptions) -> pb.ModelConfig:
    """Sets the instances, batching delay and ONNX Runtime threading of an ONNX model's config from ``options``
    (its queue limits are kept); returns the config (changed in place)."""
    del config.instance_group[:]
    _instances(config, options)
    config.dynamic_batching.max_queue_delay_microseconds = options.queue_delay_us
    for key in ("intra_op_threads", "allow_spinning"):
        config.parameters.pop(key, None)
    if options.threads:
        config.parameters["intra_op_threads"].string_value = str(options.threads)
    if not options.spinning:
        config.parameters["allow_spinning"].string_value = "0"
    return config


def classifier_config(
    name: str,
    inputs: list[str],
    num_labels: int,
    options: DeploymentOptions,
    parameters: dict[str, str],
    vocab_size: int | None = None,
    pixels: list[int] | None = None,
) -> pb.ModelConfig:
    """Returns the config of an ONNX classifier: int64 [batch, seq] inputs (fp32 [batch, *``pixels``] for an image
    model), fp32 [batch, labels] logits; or, given the ``vocab_size`` of a language model, fp32 [batch, seq, vocab]
    logits and [batch, 1] ``nll``."""
    config = pb.ModelConfig(
        name=name, backend="onnxruntime", max_batch_size=options.max_batch_size, default_model_filename=MODEL_FILE
    )
    config.input.extend(
        _tensor(pb.ModelInput, n, FP32, pixels) if pixels else _tensor(pb.ModelInput, n, INT64, [-1]) for n in inputs
    )
    if vocab_size is None:
        config.output.append(_tensor(pb.ModelOutput, "logits", FP32, [num_labels]))
    else:
        config.output.append(_tensor(pb.ModelOutput, "logits", FP32, [-1, vocab_size]))
        config.output.append(_tensor(pb.ModelOutput, "nll", FP32, [1]))
    apply_batching(config, options)
    apply_serving_settings(config, options)
    if options.tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = "FP16"
    _parameters(config, parameters)
    return config


def text_config(
    name: str,
    classifier: str,
    inputs: list[str],
    id2label: dict[int, str] | None,
    options: DeploymentOptions,
    pad_id: int,
    pad_token: str,
) -> pb.ModelConfig:
    """Returns the config of the text front end (Python, BLS): UTF-8 TEXT, optional TEXT_PAIR in; LOGITS, LABEL out.
    For a language model (``id2label`` None): TEXT in; NLL (summed next-token negative log-likelihood) and TOKENS
    (tokens predicted) out, one row per text."""
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=options.max_batch_size)
    config.input.append(_tensor(pb.ModelInput, "TEXT", STRING, [1]))
    if id2label is None:
        config.output.append(_tensor(pb.ModelOutput, "NLL", FP32, [1]))
        config.output.append(_tensor(pb.ModelOutput, "TOKENS", INT64, [1]))
    else:
        config.input.append(pb.ModelInput(name="TEXT_PAIR", data_type=STRING, dims=[1], optional=True))
        config.output.append(_tensor(pb.ModelOutput, "LOGITS", FP32, [len(id2label)]))
        config.output.append(_tensor(pb.ModelOutput, "LABEL", STRING, [1]))
    # Concurrent requests then reach one execute() together, like the classifier's.
    apply_batching(config, options)
    _instances(config, DeploymentOptions(instances=options.instances))
    _parameters(
        config,
        {
            "classifier": classifier,
            "classifier_inputs": json.dumps(inputs),
            "max_length": str(options.max_length),
            "pad_id": str(pad_id),
            "pad_token": pad_token,
            "task": "language-modeling" if id2label is None else "classification",
            "id2label": json.dumps({str(k): v for k, v in (id2label or {}).items()}),
        },
    )
    return config


def image_config(
    name: str, classifier: str, id2label: dict[int, str], options: DeploymentOptions, preprocessing: dict
) -> pb.ModelConfig:
    """Returns the config of the image front end (Python, BLS): encoded image bytes in (IMAGE); LOGITS, LABEL out."""
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=options.max_batch_size)
    config.input.append(_tensor(pb.ModelInput, "IMAGE", STRING, [1]))
    config.output.append(_tensor(pb.ModelOutput, "LOGITS", FP32, [len(id2label)]))
    config.output.append(_tensor(pb.ModelOutput, "LABEL", STRING, [1]))
    apply_batching(config, options)
    _instances(config, DeploymentOptions(instances=options.instances))
    _parameters(
        config,
        {
            "classifier": classifier,
            "preprocessing": json.dumps(preprocessing),
            "id2label": json.dumps({str(k): v for k, v in id2label.items()}),
        },
    )
    return config


def translation_config(name: str, options: DeploymentOptions, parameters: dict[str, str]) -> pb.ModelConfig:
    """Returns the config of a translation model (Python): UTF-8 SOURCE in, TRANSLATION out, one row per sentence."""
    return generation_config(name, options, parameters, "SOURCE", "TRANSLATION")


def generation_config(
    name: str, options: DeploymentOptions, parameters: dict[str, str], source: str, output: str
) -> pb.ModelConfig:
    """Returns the config of a generating model (Python): UTF-8 text in (``source``), generated text out
    (``output``), one row per text."""
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=options.max_batch_size)
    config.input.append(_tensor(pb.ModelInput, source, STRING, [1]))
    config.output.append(_tensor(pb.ModelOutput, output, STRING, [1]))
    # Concurrent requests reach one execute() together and are decoded as one batch.
    apply_batching(config, options)
    _instances(config, DeploymentOptions(instances=options.instances))
    _parameters(config, parameters)
    return config


def write_config(config: pb.ModelConfig, folder: str | Path) -> Path:
    """Writes ``config.pbtxt`` in protobuf text format into ``folder`` atomically; returns its path."""
    return atomic_write_text(Path(folder) / "config.pbtxt", text_format.MessageToString(config))


def read_config(path: str | Path) -> pb.ModelConfig:
    """Returns a ``config.pbtxt`` parsed with Triton's schema; raises HeadpruneError if it does not parse."""
    path = Path(path)
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except FileNotFoundError as error:
        raise HeadpruneError(f"'{path}' does not exist", "export the model first with 'headprune export'") from error
    except text_format.ParseError as error:
        raise HeadpruneError(f"'{path}' is not a valid Triton model config ({error})", "re-export the model") from error
