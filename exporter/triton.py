"""Triton adapter: explicit model control for the exporter, and ranking for clients."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from exporter.publish import MODEL_NAME
from rankcore.errors import DependencyError

log = logging.getLogger(__name__)

DEFAULT_LOAD_TIMEOUT_S = 60.0
DEFAULT_CALL_TIMEOUT_S = 10.0
SNAPSHOT_ONLY = "snapshot"
# Model control (load, unload, the repository index) and shared memory are restricted on
# freshrank's Triton (``--grpc-restricted-protocol`` / ``--http-restricted-api``): a call needs
# this header with the key, which only the updater and the CLI hold.
CONTROL_KEY_HEADER = "freshrank-key"  # over HTTP; gRPC metadata carries Triton's prefix:
GRPC_CONTROL_KEY_HEADER = f"triton-grpc-protocol-{CONTROL_KEY_HEADER}"
CONTROL_KEY_ENV = "FRESHRANK_TRITON_KEY"
CONTROL_KEY_FILE = "triton.key"


def control_key(path: Path | None = None) -> str | None:
    """The model-control key: ``$FRESHRANK_TRITON_KEY``, else the file ``path`` (a state
    directory's ``triton.key``) when it exists, else None (a Triton without restrictions)."""
    key = os.environ.get(CONTROL_KEY_ENV, "").strip()
    if key:
        return key
    if path is not None and path.is_file():
        return path.read_text().strip() or None
    return None


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
    # The last delta the serving state had applied (the snapshot's own for a server that
    # applies none; 0 from a model without the model_state output).
    delta_seq: int = 0

    @property
    def state(self) -> tuple[int, int]:
        return (self.version, self.delta_seq)


def contract_tensors(module: Any, columns: dict[str, np.ndarray]) -> list[Any]:
    """The serving contract's tensors for tritonclient's ``module`` (grpc or http): each column
    (BYTES, ``price`` FP32) as one batch row per candidate, shaped ``[n, 1]``."""
    out = []
    for name, values in columns.items():
        tensor = module.InferInput(name, [len(values), 1], "FP32" if name == "price" else "BYTES")
        tensor.set_data_from_numpy(values.reshape(-1, 1))
        out.append(tensor)
    return out


def make_inputs(user: str, query: str, candidates: Sequence[Candidate]) -> list[grpcclient.InferInput]:
    """Serving-contract tensors for ``user``, ``query`` and ``candidates``."""
    n = len(candidates)
    columns = {
        "user_id": np.array([user.encode()] * n, dtype=np.object_),
        "query": np.array([query.encode()] * n, dtype=np.object_),
        "item_id": np.array([c.item_id.encode() for c in candidates], dtype=np.object_),
        "category": np.array([c.category.encode() for c in candidates], dtype=np.object_),
        "brand": np.array([c.brand.encode() for c in candidates], dtype=np.object_),
        "price": np.array([c.price for c in candidates], dtype=np.float32),
    }
    return contract_tensors(grpcclient, columns)


def latest_config(config_text: str) -> str:
    """``config.pbtxt`` as Triton's JSON config, as it is (the newest version, with deltas)."""
    return _as_json(_parsed(config_text))


def _parsed(config_text: str) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(config_text, model_config_pb2.ModelConfig())


def _as_json(config: Any) -> str:
    from google.protobuf import json_format

    return str(json_format.MessageToJson(config, preserving_proto_field_name=True))


def pinned_config(config_text: str, version: int, delta: int | None = None) -> str:
    """``config.pbtxt`` as Triton's JSON config, serving exactly ``version``: as it was cut (a
    version loaded by number, pinned or rolled back to, applies no deltas), or with the deltas
    up to ``delta`` (the ``delta_limit`` parameter freshrank's backend reads)."""
    from tritonclient.grpc import model_config_pb2

    config = _parsed(config_text)
    config.version_policy.CopyFrom(
        model_config_pb2.ModelVersionPolicy(
            specific=model_config_pb2.ModelVersionPolicy.Specific(versions=[version])
        )
    )
    config.parameters["delta_limit"].string_value = SNAPSHOT_ONLY if delta is None else str(delta)
    return _as_json(config)


class TritonModel:
    """One model on one Triton server, over gRPC.

    Calls go through tritonclient's blocking gRPC client in worker threads, with gRPC deadlines
    instead of task cancellation: the control path is a few calls a second, and cancelling
    grpc.aio calls across event loops has crashed the interpreter (grpc/grpc#31441).
    """

    def __init__(
        self,
        url: str,
        model: str = MODEL_NAME,
        timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        key: str | None = None,
    ) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        key = key if key is not None else control_key()
        # Sent with control calls only; never logged (it is not part of repr or of any message).
        self._control = {GRPC_CONTROL_KEY_HEADER: key} if key else None
        self._client: grpcclient.InferenceServerClient | None = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def __aenter__(self) -> TritonModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ready(self) -> bool:
        """Triton's readiness answer; :class:`DependencyError` when it does not answer."""
        try:
            return bool(await asyncio.to_thread(self.client.is_server_ready, client_timeout=self.timeout_s))
        except InferenceServerException as exc:
            raise DependencyError(f"Triton at {self.url} did not answer: {exc}") from exc

    async def load(
        self, version: int | None = None, config_text: str | None = None, delta: int | None = None
    ) -> float:
        """Ask Triton to (re)load the model; return seconds taken.

        Without ``version`` Triton takes the newest version directory (the repository's policy);
        with it, exactly that version, through a config override built from ``config_text``
        (the repository's ``config.pbtxt``), which applies no deltas, or those up to ``delta``.
        """
        started = time.perf_counter()
        config = None
        if version is not None:
            if config_text is None:
                raise ValueError("loading a specific version needs the model's config.pbtxt text")
            config = pinned_config(config_text, version, delta)
        elif config_text is not None:
            # Sent, not left to the repository: Triton reloads a version it already serves only
            # when the config differs, and a pinned one (no deltas) must follow them again.
            config = latest_config(config_text)
        try:
            await asyncio.to_thread(
                self.client.load_model,
                self.model,
                headers=self._control,
                config=config,
                client_timeout=self.load_timeout_s,
            )
        except InferenceServerException as exc:
            raise DependencyError(f"Triton at {self.url} failed to load {self.model!r}: {exc}") from exc
        return time.perf_counter() - started

    async def served_version(self) -> int | None:
        """The newest version Triton reports READY, or None.

        Right after a load that moved to an older version the newer one can still be listed
        READY while it unloads: what answers requests is :meth:`probe`'s business.
        """
        try:
            index = await asyncio.to_thread(
                self.client.get_model_repository_index,
                headers=self._control,
                as_json=True,
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise DependencyError(f"Triton at {self.url} did not list its models: {exc}") from exc
        ready = [
            int(m["version"])
            for m in index.get("models", [])
            if m.get("name") == self.model and m.get("state") == "READY" and m.get("version")
        ]
        return max(ready) if ready else None

    async def probe(self) -> int:
        """The version that answers a one-candidate request now."""
        return (await self.probe_state())[0]

    async def probe_state(self) -> tuple[int, int]:
        """The (version, delta sequence) that answers a one-candidate request now."""
        return (await self.rank("", "", [Candidate("")])).state

    async def rank(self, user: str, query: str, candidates: Sequence[Candidate]) -> Ranking:
        """Scores for ``candidates``, best first, with the version that computed them."""
        if not candidates:
            raise ValueError("expected at least one candidate item")
        inputs = make_inputs(user, query, candidates)
        try:
            result = await asyncio.to_thread(
                self.client.infer, self.model, inputs, client_timeout=self.timeout_s
            )
        except InferenceServerException as exc:
            raise DependencyError(f"Triton at {self.url} could not rank: {exc}") from exc
        scores = result.as_numpy("score").reshape(-1)
        version = int(result.get_response().model_version)
        state = result.as_numpy("model_state")  # [version, delta] on every row
        order = np.argsort(-scores, kind="stable")
        seq = int(state.reshape(-1, 2)[0, 1]) if state is not None and state.size >= 2 else 0
        return Ranking(version, [(candidates[i], float(scores[i])) for i in order], seq)
