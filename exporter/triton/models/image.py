"""Triton Python model (BLS): encoded images (PNG, JPEG, ... as raw bytes) in, logits and label names out.

Decodes each image with Pillow and preprocesses it as the checkpoint's image processor
config says, the way transformers' ViT image processor does with its PIL backend: RGB,
resize to (height, width) with the config's resampling filter, rescale, normalize,
channels first. The ``pixel_values`` go to the tensor-level ONNX model named in the
config, and the highest logit is mapped to its label name. An image that cannot be
decoded gets an error naming its row, and only the request that holds it fails.
"""

import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

# Above this many pixels Pillow refuses to decode (its decompression-bomb guard), before allocating them.
Image.MAX_IMAGE_PIXELS = 50_000_000


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.classifier = parameters["classifier"]
        processing = json.loads(parameters["preprocessing"])
        self.size = (processing["width"], processing["height"]) if processing["resize"] else None
        self.resample = processing["resample"]
        self.scale = processing["rescale_factor"]
        self.mean = (
            None if processing["mean"] is None else np.array(processing["mean"], dtype=np.float32)[:, None, None]
        )
        self.std = None if processing["std"] is None else np.array(processing["std"], dtype=np.float32)[:, None, None]
        id2label = json.loads(parameters["id2label"])
        self.labels = np.array([id2label[str(i)].encode() for i in range(len(id2label))], dtype=object)

    def _pixels(self, row, data):
        """Returns one image's pixel_values (3, height, width), float32."""
        try:
            image = Image.open(io.BytesIO(bytes(data)))
            image = image.convert("RGB")
        except Exception as error:  # Pillow raises many types for bad, truncated or oversized images
            raise ValueError(
                f"IMAGE row {row} is not an image Pillow can decode ({type(error).__name__}: {error})"
            ) from error
        if self.size is not None:
            image = image.resize(self.size, resample=self.resample)
        pixels = np.moveaxis(np.array(image), -1, 0)
        if self.scale is not None:
            pixels = pixels.astype(np.float64) * self.scale  # in float64, as transformers rescales
        pixels = pixels.astype(np.float32)
        if self.mean is not None:
            pixels = (pixels - self.mean) / self.std
        return pixels

    def _classify(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        if tensor is None:
            raise ValueError("input IMAGE is missing")
        rows = tensor.as_numpy().reshape(-1)
        pixels = np.stack([self._pixels(row, data) for row, data in enumerate(rows)]).astype(np.float32)
        response = pb_utils.InferenceRequest(
            model_name=self.classifier,
            requested_output_names=["logits"],
            inputs=[pb_utils.Tensor("pixel_values", pixels)],
        ).exec()
        if response.has_error():
            raise RuntimeError(f"model '{self.classifier}': {response.error().message()}")
        logits = pb_utils.get_output_tensor_by_name(response, "logits").as_numpy()
        labels = self.labels[logits.argmax(-1)].reshape(-1, 1)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor("LOGITS", logits), pb_utils.Tensor("LABEL", labels)]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._classify(request))
            except (ValueError, RuntimeError) as error:
                responses.append(_error(str(error)))
            except Exception as error:  # anything else still fails this request only
                responses.append(_error(f"cannot classify this request ({type(error).__name__}: {error})"))
        return responses
