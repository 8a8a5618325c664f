"""Triton adapter: explicit model control for the exporter, and ranking for clients."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from exporter.publish import MODEL_NAME
from updater import DependencyError

log = logging.getLogger(__name__)

DEFAULT_LOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One item to rank, with the attributes the model reads."""

    item_id: str
    category: str = ""
    brand: str = ""
    price: float = 0.0


@dataclass(frozen=True, slots=True)
class Ranking:
    version: int
    items: list[tuple[Candidate, float]]  # best first


def make_inputs(user: str, query: str, candidates: Sequence[Candidate]) -> list[grpcclient.InferInput]:
    """Serving-contract tensors: one row per candidate."""
    n = len(candidates)
    columns: dict[str, list[str]] = {
        "user_id": [user] * n,
        "query": [query] * n,
        "item_id": [c.item_id for c in candidates],
        "category": [c.category for c in candidates],
        "brand": [c.brand for c in candidates],
    }
    inputs = []
    for name, values in columns.items():
        tensor = grpcclient.InferInput(name, [n], "BYTES")
        tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=np.object_))
        inputs.append(tensor)
    price = grpcclient.InferInput("price", [n], "FP32")
    price.set_data_from_numpy(np.array([c.price for c in candidates], dtype=np.float32))
    inputs.append(price)
    return inputs


class TritonModel:
    """One model on one Triton server, over gRPC (asyncio)."""

    def __init__(self, url: str, model: str = MODEL_NAME) -> None:
        self.url = url
        self.model = model
        self._client: grpcclient.InferenceServerClient | None = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> TritonModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_server_ready())
        except InferenceServerException:
            return False

    async def load(self, timeout_s: float = DEFAULT_LOAD_TIMEOUT_S) -> float:
        """Ask Triton to (re)load the model (it takes the newest version); return seconds taken."""
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self.client.load_model(self.model), timeout_s)
        except InferenceServerException as exc:
            raise DependencyError(f"Triton at {self.url} failed to load {self.model!r}: {exc}") from exc
        return time.perf_counter() - started

    async def served_version(self) -> int | None:
        """The newest version Triton reports READY, or None."""
        try:
            index = await self.client.get_model_repository_index(as_json=True)
        except InferenceServerException:
            return None
        ready = [
            int(m["version"])
            for m in index.get("models", [])
            if m.get("name") == self.model and m.get("state") == "READY" and m.get("version")
        ]
        return max(ready) if ready else None

    async def rank(self, user: str, query: str, candidates: Sequence[Candidate]) -> Ranking:
        """Scores for ``candidates``, best first, with the version that computed them."""
        if not candidates:
            raise ValueError("expected at least one candidate item")
        try:
            result = await self.client.infer(self.model, make_inputs(user, query, candidates))
        except InferenceServerException as exc:
            raise DependencyError(f"Triton at {self.url} could not rank: {exc}") from exc
        scores = result.as_numpy("score")
        version = int(result.get_response().model_version)
        order = np.argsort(-scores, kind="stable")
        return Ranking(version, [(candidates[i], float(scores[i])) for i in order])
