"""Triton Python model: raw UTF-8 strings in, token ids and attention mask out.

Runs the checkpoint's fast tokenizer (``tokenizer/tokenizer.json`` in this version)
with the ``tokenizers`` library: the same normalisation, special tokens, padding and
truncation as transformers, without importing transformers into the backend stub.
Each request's texts are padded together.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "tokenizer", "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(path)
        self.tokenizer.enable_truncation(int(parameters["max_length"]))
        self.tokenizer.enable_padding(pad_id=int(parameters["pad_id"]), pad_token=parameters["pad_token"])
        self.outputs = [spec["name"] for spec in config["output"]]

    def _texts(self, request):
        raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
        texts = []
        for value in raw:
            try:
                text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError as error:
                raise ValueError(f"TEXT must be UTF-8 encoded ({error.reason} at byte {error.start})") from error
            if not text.strip():
                raise ValueError("TEXT must not be empty")
            texts.append(text)
        return texts

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                texts = self._texts(request)
            except ValueError as error:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error))))
                continue
            encodings = self.tokenizer.encode_batch(texts)
            tensors = [pb_utils.Tensor(name, np.array([getattr(e, ENCODING_FIELDS[name]) for e in encodings], dtype=np.int64))
                       for name in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
