"""Triton Python model: logits in, the label name of the highest logit out."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        id2label = json.loads(config["parameters"]["id2label"]["string_value"])
        self.names = np.array([id2label[str(i)].encode() for i in range(len(id2label))], dtype=object)

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
            labels = self.names[logits.argmax(-1)].reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("LABEL", labels)]))
        return responses
