"""The serving contract on the real Triton: requests that break it are refused with
INVALID_ARGUMENT and a message naming the input, the next one is served; model control is
restricted to the key's holders, and refusing an unauthorised unload leaves inference as it was."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from exporter.onnx_export import build_onnx, write_onnx
from exporter.publish import Publisher
from exporter.triton import GRPC_CONTROL_KEY_HEADER, Candidate, TritonModel, control_key
from exporter.triton import contract_tensors as tensors
from freshrank.bench.common import request_columns as columns
from rankcore.features import Vocabularies, encode
from rankcore.model import RankerConfig
from tests.e2e.helpers import Lane
from tests.unit.helpers import random_samples
from updater.learner import Learner

pytestmark = pytest.mark.e2e
MAX_ROWS = 4096  # max_batch_size in model_repository/ranker/config.pbtxt


async def publish(lane: Lane) -> TritonModel:
    config = RankerConfig()
    learner, vocabs = Learner(config, device="cpu"), Vocabularies(config)
    learner.learn(encode(random_samples(64), vocabs, learner.config.max_tokens))
    publisher = Publisher(Path(lane.stack.addresses.repository), model=lane.model_name)
    version = publisher.next_version()
    publisher.publish(
        version, lambda d: write_onnx(build_onnx(learner.frozen_copy(), vocabs, version=version), d)
    )
    triton = TritonModel(lane.stack.addresses.triton_grpc, lane.model_name)
    await triton.load()
    return triton


def refusal(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


async def test_requests_that_break_the_contract_are_refused_by_name(lane: Lane) -> None:
    triton = await publish(lane)
    a = lane.stack.addresses
    grpc = grpcclient.InferenceServerClient(a.triton_grpc)
    http = httpclient.InferenceServerClient(a.triton_http)

    def infer(cols: dict[str, np.ndarray]) -> None:
        grpc.infer(lane.model_name, tensors(grpcclient, cols), client_timeout=10)

    unequal = columns(3)
    unequal["price"] = np.full(2, 20.0, dtype=np.float32)
    nan_price = columns(3)
    nan_price["price"][1] = np.nan
    inf_price = columns(3)
    inf_price["price"][2] = np.inf
    cases = {
        "unequal lengths": (unequal, "input '"),  # Triton names the first input that differs
        "no candidates": (columns(0), ""),
        "NaN price": (nan_price, "price"),
        "infinite price": (inf_price, "price"),
        "too many candidates": (columns(MAX_ROWS + 1), ""),
    }
    try:
        for case, (cols, named) in cases.items():
            error = await asyncio.to_thread(refusal, lambda c=cols: infer(c))  # type: ignore[misc]
            assert error.status() == "StatusCode.INVALID_ARGUMENT", f"{case}: {error}"
            assert named in str(error), f"{case}: {error}"
            assert "onnxruntime" not in str(error).lower(), f"{case}: an internal error leaked: {error}"
            # Served as usual right after, with scores that are numbers.
            ranking = await triton.rank("u1", "red shoes", [Candidate("i1", "shoes", "acme", 20.0)])
            assert np.isfinite([s for _, s in ranking.items]).all(), case
        # HTTP refuses the same way (400 with the message). tritonclient's HTTP client is
        # gevent's and stays on the thread that made it: called here, not in a worker thread.
        error = refusal(lambda: http.infer(lane.model_name, tensors(httpclient, nan_price)))
        assert error.status() == "400" and "price" in str(error), str(error)
        # A batch of good requests with a bad one among them: only the bad one is refused.
        results = await asyncio.gather(
            *(
                asyncio.to_thread(grpc.infer, lane.model_name, tensors(grpcclient, columns(5)))
                for _ in range(8)
            ),
            asyncio.to_thread(refusal, lambda: infer(nan_price)),
        )
        for result in results[:-1]:
            assert np.isfinite(result.as_numpy("score")).all()
            assert result.as_numpy("score").shape == (5, 1)
            assert result.as_numpy("model_state").shape == (5, 2)
    finally:
        grpc.close()
        http.close()
        await triton.close()


async def test_model_control_needs_the_key_and_refusing_it_leaves_inference_alone(lane: Lane) -> None:
    triton = await publish(lane)
    a = lane.stack.addresses
    key = control_key()
    assert key, "the embedded stack sets the key for the processes it serves"
    grpc = grpcclient.InferenceServerClient(a.triton_grpc)
    http = httpclient.InferenceServerClient(a.triton_http)
    try:
        before = await triton.rank("u1", "red shoes", [Candidate("i1", "shoes", "acme", 20.0)])
        for headers in (None, {GRPC_CONTROL_KEY_HEADER: "not-the-key"}):
            error = await asyncio.to_thread(
                refusal, lambda h=headers: grpc.unload_model(lane.model_name, headers=h, client_timeout=10)
            )
            assert "restricted" in str(error), str(error)
            http_headers = None if headers is None else {"freshrank-key": "not-the-key"}
            error = refusal(lambda h=http_headers: http.unload_model(lane.model_name, headers=h))
            assert error.status() in ("403", "401"), str(error)
            for call in (
                lambda h=headers: grpc.get_model_repository_index(headers=h, client_timeout=10),
                lambda h=headers: grpc.load_model(lane.model_name, headers=h, client_timeout=10),
                lambda h=headers: grpc.register_system_shared_memory("x", "/x", 8, headers=h),
            ):
                await asyncio.to_thread(refusal, call)
        # Inference and metadata are open, and the model is still served, unchanged.
        assert await asyncio.to_thread(grpc.is_model_ready, lane.model_name)
        after = await triton.rank("u1", "red shoes", [Candidate("i1", "shoes", "acme", 20.0)])
        assert after == before
        # The key's holder (the updater, the CLI) controls the model as before.
        assert await triton.served_version() == before.version
        assert await triton.load() >= 0
        log = Path(lane.stack.triton.state_dir) / "logs" / "triton.log"
        assert key not in log.read_text(errors="replace")
        assert (lane.stack.triton.key_file.stat().st_mode & 0o777) == 0o600
    finally:
        grpc.close()
        http.close()
        await triton.close()
