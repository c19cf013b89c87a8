"""Triton Python model: prompts in, greedy continuations out, for a decoder-only language model with a KV cache.

Runs the exported step graph (``generate.onnx``) with ONNX Runtime in its own process and decodes
with ``search.py`` (shipped beside this file), tokenising with the checkpoint's ``tokenizers``
tokenizer. Request parameter: ``max_new_tokens``. Requests that arrive together and ask for the
same budget are decoded as one batch (prompts padded on the left); a continuation leaves the batch at
its end of sequence. A bad request (empty or over-long prompt, a budget out of range) gets its own
error; the others are still answered.
"""

import json
import os
import sys

import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import grouped_responses, integer_parameter, token_rows  # noqa: E402  (shipped next to this file)
from search import CausalSearch, session_runner  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.settings = json.loads(parameters["generation"])
        step = session_runner(os.path.join(folder, "generate.onnx"), int(parameters.get("threads", "0")))
        s = self.settings
        self.search = CausalSearch(step, s["layout"], s["eos_ids"], s["pad_id"])
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer", "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()

    def _request(self, request):
        """Returns (max_new_tokens, token ids of each prompt) of one request; raises ValueError when it is bad."""
        parameters = json.loads(request.parameters() or "{}")
        limit = self.settings["max_new_tokens"]
        new_tokens = integer_parameter(parameters, "max_new_tokens", min(limit, 32), 1, limit)
        prompts = token_rows(
            pb_utils.get_input_tensor_by_name(request, "PROMPT"),
            "PROMPT",
            self.tokenizer,
            self.settings["positions"] - new_tokens,
            "shorten the prompt or ask for fewer new tokens",
        )
        return new_tokens, prompts

    def _generate(self, new_tokens, prompts):
        return self.tokenizer.decode_batch(self.search.greedy(prompts, new_tokens), skip_special_tokens=True)

    def execute(self, requests):
        return grouped_responses(pb_utils, requests, self._request, self._generate, "GENERATED", "generate")
