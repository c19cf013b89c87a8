"""A small client over tritonclient (HTTP or gRPC) for tensors and raw text, with clear errors."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from exporter.errors import HeadpruneError

PROTOCOLS = ("http", "grpc")
# Triton's words for a request refused by a full queue or its queue timeout, and for a dead backend process.
OVERLOADED = ("Exceeds maximum queue size", "Request timeout expired")
BACKEND_DIED = "is not healthy"
NUMPY_TO_TRITON = {
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.float32): "FP32",
    np.dtype(np.object_): "BYTES",
}


def strings_array(texts: list[str]) -> np.ndarray:
    """Returns texts as a [rows, 1] array of UTF-8 bytes, the shape of the served string inputs."""
    return np.array([[t.encode("utf-8")] for t in texts], dtype=object).reshape(len(texts), 1)


class TritonClient:
    """Talks to one Triton server; every failure becomes a HeadpruneError naming the model or URL."""

    def __init__(self, url: str, protocol: str = "http", timeout: float = 60.0):
        if protocol not in PROTOCOLS:
            raise HeadpruneError(f"protocol '{protocol}' is unknown", "use http or grpc")
        self.url, self.protocol = url, protocol
        self.module = httpclient if protocol == "http" else grpcclient
        kwargs = {"network_timeout": timeout, "connection_timeout": timeout} if protocol == "http" else {}
        self.client = self.module.InferenceServerClient(url, **kwargs)

    def _call(self, model: str | None, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except InferenceServerException as error:
            message = error.message() or str(error)
            if model and ("unknown model" in message or "is not found" in message):
                raise HeadpruneError(
                    f"Triton at {self.url} has no ready model '{model}' ({message})",
                    "list the served models with 'headprune models', or export the model first",
                ) from error
            if any(words in message for words in OVERLOADED):
                raise HeadpruneError(
                    f"Triton at {self.url} is overloaded: it refused the request to {model!r} ({message})",
                    "retry after a pause, send fewer requests at once, or export the model with more "
                    "--instances or a larger --max-queue-size / --queue-timeout-ms",
                ) from error
            if BACKEND_DIED in message:
                raise HeadpruneError(
                    f"the backend process of model {model!r} at {self.url} has died ({message}); "
                    "Triton does not restart it",
                    "restart the server ('headprune serve' does so by itself unless --on-failure exit)",
                ) from error
            raise HeadpruneError(
                f"Triton at {self.url} rejected the request{f' to {model!r}' if model else ''}: {message}",
                "check the inputs against the model's config.pbtxt",
            ) from error
        except Exception as error:  # connection refused, reset, timeouts: the server is unreachable
            raise HeadpruneError(
                f"cannot reach Triton at {self.url} ({type(error).__name__}: {error})",
                "start it with 'headprune serve' or give the right `url`",
            ) from error

    def is_ready(self) -> bool:
        """Returns True when the server answers and is ready."""
        try:
            return bool(self.client.is_server_ready())
        except Exception:
            return False

    def server_metadata(self) -> dict:
        """Returns the server's name and version."""
        metadata = self._call(None, self.client.get_server_metadata)
        if isinstance(metadata, dict):
            return {"name": metadata.get("name"), "version": metadata.get("version")}
        return {"name": metadata.name, "version": metadata.version}

    def models(self) -> list[dict]:
        """Returns the repository index: name, version and state of every model."""
        index = self._call(None, self.client.get_model_repository_index)
        if self.protocol == "grpc":
            return [{"name": m.name, "version": m.version, "state": m.state} for m in index.models]
        return index

    def versions(self, model: str) -> list[str]:
        """Returns the versions of a model that the server has loaded (its model metadata)."""
        if self.protocol == "grpc":
            return list(self._call(model, self.client.get_model_metadata, model, as_json=True).get("versions", []))
        return list(self._call(model, self.client.get_model_metadata, model).get("versions", []))

    def config(self, model: str) -> dict:
        """Returns a model's configuration as JSON data."""
        if self.protocol == "grpc":
            return self._call(model, self.client.get_model_config, model, as_json=True)["config"]
        return self._call(model, self.client.get_model_config, model)

    def infer(
        self, model: str, arrays: dict[str, np.ndarray], outputs: list[str], parameters: dict | None = None
    ) -> dict[str, np.ndarray]:
        """Returns the named outputs of one inference request (with optional request ``parameters``)."""
        inputs = []
        for name, array in arrays.items():
            datatype = NUMPY_TO_TRITON.get(array.dtype)
            if datatype is None:
                raise HeadpruneError(
                    f"input '{name}' has dtype {array.dtype}, which headprune does not send",
                    "send int64, int32, float32 or strings",
                )
            tensor = self.module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        requested = [self.module.InferRequestedOutput(name) for name in outputs]
        result = self._call(model, self.client.infer, model, inputs, outputs=requested, parameters=parameters)
        return {name: result.as_numpy(name) for name in outputs}

    def classify_text(
        self, model: str, texts: list[str], pairs: list[str] | None = None
    ) -> tuple[np.ndarray, list[str]]:
        """Returns (logits, label names) for raw texts, or (text, pair) sentence pairs, sent to a ``<name>_text`` model."""
        arrays = {"TEXT": strings_array(texts)}
        if pairs is not None:
            if len(pairs) != len(texts):
                raise HeadpruneError(
                    f"{len(pairs)} text pairs were given for {len(texts)} texts",
                    "give exactly one second segment (text_pair) per text",
                )
            arrays["TEXT_PAIR"] = strings_array(pairs)
        out = self.infer(model, arrays, ["LOGITS", "LABEL"])
        return out["LOGITS"], [
            label.decode() if isinstance(label, bytes) else str(label) for label in out["LABEL"].reshape(-1)
        ]

    def classify_images(self, model: str, images: list[bytes]) -> tuple[np.ndarray, list[str]]:
        """Returns (logits, label names) for encoded images (the bytes of PNG, JPEG, ... files) sent to a
        ``<name>_image`` model."""
        out = self.infer(
            model, {"IMAGE": np.array([[bytes(image)] for image in images], dtype=object)}, ["LOGITS", "LABEL"]
        )
        return out["LOGITS"], [
            label.decode() if isinstance(label, bytes) else str(label) for label in out["LABEL"].reshape(-1)
        ]

    def score_text(self, model: str, texts: list[str], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Returns (summed next-token negative log-likelihood, tokens predicted) per text, from a language model's
        ``<name>_text`` model, sent ``batch_size`` texts per request."""
        outputs = [
            self.infer(model, {"TEXT": strings_array(texts[start : start + batch_size])}, ["NLL", "TOKENS"])
            for start in range(0, len(texts), batch_size)
        ]
        return (
            np.concatenate([out["NLL"].reshape(-1) for out in outputs]),
            np.concatenate([out["TOKENS"].reshape(-1) for out in outputs]),
        )

    def generate(self, model: str, prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Returns the greedy continuation of each prompt by a ``<name>_generate`` model."""
        parameters = {"max_new_tokens": max_new_tokens} if max_new_tokens is not None else None
        out = self.infer(model, {"PROMPT": strings_array(prompts)}, ["GENERATED"], parameters)
        return [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in out["GENERATED"].reshape(-1)]

    def translate(
        self,
        model: str,
        sources: list[str],
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 16,
    ) -> list[str]:
        """Returns the translations of raw source sentences by a ``<name>_translate`` model (``num_beams`` and
        ``max_new_tokens`` default to the checkpoint's generation config), sent ``batch_size`` sentences per request."""
        given = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
        parameters = {key: value for key, value in given.items() if value is not None}
        translations = []
        for start in range(0, len(sources), batch_size):
            out = self.infer(
                model, {"SOURCE": strings_array(sources[start : start + batch_size])}, ["TRANSLATION"], parameters
            )
            translations += [
                t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in out["TRANSLATION"].reshape(-1)
            ]
        return translations

    def statistics(self, model: str) -> dict:
        """Returns Triton's cumulative inference statistics of a model (counts and nanoseconds)."""
        if self.protocol == "grpc":
            return self._call(model, self.client.get_inference_statistics, model, as_json=True)
        return self._call(model, self.client.get_inference_statistics, model)

    def close(self) -> None:
        """Closes the connection."""
        self.client.close()
