"""The queue policy's cost in the bundled Triton (2.51): under a queue limit, a request that arrives while the model's
instance is still busy often waits 500 ms more (the batcher misses the instance's wake-up; measured: 1 to 8 of 8
requests); under the exported default (no queue policy) it waits only for the instance."""

from __future__ import annotations

import time

import numpy as np
import pytest

from exporter.triton.config import DeploymentOptions, apply_batching, pb, read_config, write_config
from serving.client import TritonClient
from serving.server.process import TritonServer, free_port

# Answers first, then stays busy for 50 ms (as a backend does that cleans up after answering): the client's next
# request then arrives while the instance is still busy.
BUSY_AFTER_ANSWERING = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            request.get_response_sender().send(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]),
                                               flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        time.sleep(0.05)
        return None
"""


def _model(repo, name: str, options: DeploymentOptions) -> None:
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=4)
    config.input.append(pb.ModelInput(name="x", data_type=pb.TYPE_FP32, dims=[1]))
    config.output.append(pb.ModelOutput(name="y", data_type=pb.TYPE_FP32, dims=[1]))
    apply_batching(config, options)
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(BUSY_AFTER_ANSWERING)
    write_config(config, repo / name)


def test_the_default_writes_no_queue_policy_and_a_limit_writes_one(tmp_path):
    for name, options in (("default", DeploymentOptions()), ("limited", DeploymentOptions(max_queue_size=8))):
        _model(tmp_path, name, options)
    assert not read_config(tmp_path / "default" / "config.pbtxt").dynamic_batching.HasField("default_queue_policy")
    policy = read_config(tmp_path / "limited" / "config.pbtxt").dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 8 and policy.default_timeout_microseconds == 0


@pytest.mark.slow
def test_a_request_arriving_while_the_instance_is_busy_waits_only_for_the_instance(tmp_path):
    _model(tmp_path, "default", DeploymentOptions())
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    with TritonServer(tmp_path, **ports) as server:
        client = TritonClient(server.http_url)
        client.infer("default", {"x": np.ones((1, 1), np.float32)}, ["y"])
        latencies = []
        for _ in range(20):
            began = time.perf_counter()
            client.infer("default", {"x": np.ones((1, 1), np.float32)}, ["y"])
            latencies.append((time.perf_counter() - began) * 1000)
        client.close()
    # Each request waits for the 50 ms the instance stays busy after answering the previous one, never for the
    # batcher's 500 ms timeout.
    assert all(40 < ms < 300 for ms in latencies), latencies
