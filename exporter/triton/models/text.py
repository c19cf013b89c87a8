"""Triton Python model (BLS): raw UTF-8 strings in, logits and label names out (for a language model: each text's
summed next-token negative log-likelihood and the number of tokens it predicts, from the model's ``nll`` output).

Tokenises with the checkpoint's fast tokenizer (``tokenizer/tokenizer.json`` in this
version) using the ``tokenizers`` library (same normalisation, special tokens,
padding and truncation as transformers, without importing transformers into the
backend stub), sends the tensors to the tensor-level ONNX model named in the
config, and maps the highest logit to its label name. Each request's texts are
padded together. The optional TEXT_PAIR input (one second segment per TEXT row)
tokenises sentence pairs the way transformers' ``tokenizer(texts, pairs)`` does. Bad
text (empty, not UTF-8) gets an error naming the problem, and only the request that
holds it fails: every request gets its own answer.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "tokenizer", "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(path)
        self.tokenizer.enable_truncation(int(parameters["max_length"]))
        self.tokenizer.enable_padding(pad_id=int(parameters["pad_id"]), pad_token=parameters["pad_token"])
        self.classifier = parameters["classifier"]
        self.inputs = json.loads(parameters["classifier_inputs"])
        self.language_model = parameters.get("task") == "language-modeling"
        id2label = json.loads(parameters["id2label"])
        self.labels = np.array([id2label[str(i)].encode() for i in range(len(id2label))], dtype=object)

    def _strings(self, request, name):
        """Returns the decoded rows of the string input ``name``, or None when the request lacks it."""
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        texts = []
        for row, value in enumerate(tensor.as_numpy().reshape(-1)):
            try:
                text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{name} row {row} must be UTF-8 encoded ({error.reason} at byte {error.start})"
                ) from error
            if not text.strip():
                raise ValueError(f"{name} row {row} must not be empty")
            texts.append(text)
        return texts

    def _inputs(self, request):
        """Returns what to tokenise: the texts, or (text, text_pair) tuples when TEXT_PAIR is sent."""
        texts = self._strings(request, "TEXT")
        if texts is None:
            raise ValueError("input TEXT is missing")
        pairs = None if self.language_model else self._strings(request, "TEXT_PAIR")
        if pairs is None:
            return texts
        if len(pairs) != len(texts):
            raise ValueError(f"TEXT_PAIR has {len(pairs)} rows but TEXT has {len(texts)}; send one pair per text")
        return list(zip(texts, pairs))

    def _run(self, encodings, output):
        """Returns ``output`` of the tensor model for the encoded texts."""
        tensors = [
            pb_utils.Tensor(name, np.array([getattr(e, ENCODING_FIELDS[name]) for e in encodings], dtype=np.int64))
            for name in self.inputs
        ]
        response = pb_utils.InferenceRequest(
            model_name=self.classifier, requested_output_names=[output], inputs=tensors
        ).exec()
        if response.has_error():
            raise RuntimeError(f"model '{self.classifier}': {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, output).as_numpy()

    def _classify(self, inputs):
        encodings = self.tokenizer.encode_batch(inputs)
        if self.language_model:
            # Only the small nll output comes back: a batch's logits would be seq * vocab floats per text.
            nll = self._run(encodings, "nll")
            tokens = np.array([[max(sum(e.attention_mask) - 1, 0)] for e in encodings], dtype=np.int64)
            return pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("NLL", nll), pb_utils.Tensor("TOKENS", tokens)]
            )
        logits = self._run(encodings, "logits")
        labels = self.labels[logits.argmax(-1)].reshape(-1, 1)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor("LOGITS", logits), pb_utils.Tensor("LABEL", labels)]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._classify(self._inputs(request)))
            except (ValueError, RuntimeError) as error:
                responses.append(_error(str(error)))
            except Exception as error:  # anything else still fails this request only
                responses.append(_error(f"cannot classify this request ({type(error).__name__}: {error})"))
        return responses
