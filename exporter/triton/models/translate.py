"""Triton Python model: raw source strings in, translations out (greedy or beam search with a KV cache).

One model runs both exported graphs (``encoder.onnx``, ``decoder.onnx``) with ONNX
Runtime in its own process and decodes with ``search.py`` (shipped beside this file),
or, when the config's ``bls`` parameter names two served models, sends every encoder
and decoder step to them as BLS requests (measured slower: see ``benchmarks/translation_serving.py``),
tokenising with the checkpoint's ``tokenizers`` tokenizer. Request parameters:
``num_beams`` (1 = greedy) and ``max_new_tokens``, defaulting to the checkpoint's generation config as
transformers' ``generate`` does (beams only where the export matched transformers' beams). Requests that arrive
together and ask for the same search are decoded as one batch; a sequence leaves the
batch at its end of sentence. A bad request (empty or over-long source, a beam size
or token budget out of range) gets its own error; the others are still answered.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import grouped_responses, integer_parameter, token_rows  # noqa: E402  (shipped next to this file)
from search import Seq2SeqSearch, session_runner  # noqa: E402


def _bls_runner(spec):
    """Returns ``run(feeds) -> {output name: array}`` sending the graph's inputs to the served model ``spec["model"]``."""

    def run(feeds):
        inputs = [pb_utils.Tensor(name, np.ascontiguousarray(feeds[name])) for name in spec["inputs"]]
        response = pb_utils.InferenceRequest(
            model_name=spec["model"], inputs=inputs, requested_output_names=spec["outputs"]
        ).exec()
        if response.has_error():
            raise RuntimeError(f"{spec['model']}: {response.error().message()}")
        return {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}

    return run


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.settings = json.loads(parameters["generation"])
        threads = int(parameters.get("threads", "0"))
        bls = json.loads(parameters.get("bls") or "{}")
        if bls:
            encode, decode = (_bls_runner(bls[part]) if bls.get(part) else None for part in ("encoder", "decoder"))
        else:
            encoder = os.path.join(folder, "encoder.onnx")
            encode = session_runner(encoder, threads) if os.path.exists(encoder) else None
            decode = session_runner(os.path.join(folder, "decoder.onnx"), threads)
        s = self.settings
        self.search = Seq2SeqSearch(
            encode, decode, s["layout"], s["start_id"], s["eos_id"], s["suppressed_ids"], s["forced_eos"]
        )
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer", "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()  # each source is tokenised once, when checked; batches are padded here
        self.limits = json.loads(parameters["limits"])

    def _request(self, request):
        """Returns (token ids of each source, num_beams, max_new_tokens) of one request; raises ValueError when it is bad."""
        sources = token_rows(
            pb_utils.get_input_tensor_by_name(request, "SOURCE"),
            "SOURCE",
            self.tokenizer,
            self.settings["max_length"],
            "split the text into sentences",
        )
        parameters = json.loads(request.parameters() or "{}")
        limits = self.limits
        if limits.get("beam_refused") and int(parameters.get("num_beams", 1) or 1) > 1:
            raise ValueError(f"num_beams {parameters['num_beams']} is not served: {limits['beam_refused']}")
        beams = integer_parameter(parameters, "num_beams", limits.get("default_beams", 1), 1, limits["max_beams"])
        new_tokens = integer_parameter(
            parameters, "max_new_tokens", limits["default_new_tokens"], 1, limits["max_new_tokens"]
        )
        return sources, beams, new_tokens

    def _translate(self, sources, beams, new_tokens):
        width = max(len(ids) for ids in sources)
        pad = self.settings["pad_id"]
        ids = np.array([row + [pad] * (width - len(row)) for row in sources], dtype=np.int64)
        mask = np.array([[1] * len(row) + [0] * (width - len(row)) for row in sources], dtype=np.int64)
        if beams == 1:
            generated = self.search.greedy(ids, mask, new_tokens)
        else:
            generated = self.search.beam(
                ids,
                mask,
                beams,
                new_tokens,
                self.limits.get("length_penalty", 1.0),
                self.limits.get("early_stopping", True),
            )
        return self.tokenizer.decode_batch(generated, skip_special_tokens=True)

    def _parse(self, request):
        sources, beams, new_tokens = self._request(request)
        return (beams, new_tokens), sources

    def execute(self, requests):
        return grouped_responses(
            pb_utils,
            requests,
            self._parse,
            lambda key, sources: self._translate(sources, *key),
            "TRANSLATION",
            "translate",
        )
