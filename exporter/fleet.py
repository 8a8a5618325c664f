"""Several Triton replicas that share one model repository, as one model server.

A :class:`ReplicaSet` is a :class:`exporter.server.ModelServer`: the release side and the delta
stream drive it exactly as they drive one server, and it answers for the fleet:

- ``load`` loads on every replica at once and fails (blocking the promotion, with the replicas
  that failed named) unless every one loaded;
- ``served_version``, ``probe`` and ``probe_state`` answer the *lowest* state across the
  replicas, so a version (or a delta) counts as live only once every replica serves it, and a
  replica that does not answer makes the call fail;
- a replica that was down and comes back without the model is caught up by the release side's
  reconcile (its ``served_version`` makes the fleet's differ from what should be served, and the
  load that follows is a no-op on the replicas that already serve it).

:meth:`ReplicaSet.replicas` is each replica's last known state, for the status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from exporter.server import ModelServer
from rankcore.errors import DependencyError

T = TypeVar("T")


@dataclass
class ReplicaState:
    url: str
    ok: bool | None = None  # None: not asked yet
    state: tuple[int, int] | None = None  # (version, delta) it answered with last
    error: str | None = None
    at: float | None = None  # when it last answered or failed (epoch s)


class ReplicaSet:
    """N model servers behind one :class:`ModelServer` interface (see the module doc)."""

    def __init__(self, servers: Sequence[ModelServer]) -> None:
        if not servers:
            raise ValueError("expected at least one replica")
        self.servers = list(servers)
        self.url = ",".join(s.url for s in self.servers)
        self._states = {s.url: ReplicaState(s.url) for s in self.servers}

    def replicas(self) -> list[dict[str, Any]]:
        return [asdict(self._states[s.url]) for s in self.servers]

    async def _all(self, call: Callable[[ModelServer], Awaitable[T]], what: str) -> list[T]:
        """``call`` on every replica at once; DependencyError naming each one that failed."""
        results = await asyncio.gather(*(call(s) for s in self.servers), return_exceptions=True)
        failed = []
        for server, result in zip(self.servers, results, strict=True):
            state = self._states[server.url]
            state.at = time.time()
            if isinstance(result, BaseException):
                if not isinstance(result, DependencyError):
                    raise result
                state.ok, state.error = False, str(result)
                failed.append(f"{server.url}: {result}")
            else:
                state.ok, state.error = True, None
        if failed:
            raise DependencyError(
                f"{len(failed)} of {len(self.servers)} replicas failed to {what}: " + "; ".join(failed)
            )
        return [r for r in results if not isinstance(r, BaseException)]

    async def ready(self) -> bool:
        return all(await self._all(lambda s: s.ready(), "answer readiness"))

    async def load(
        self, version: int | None = None, config_text: str | None = None, delta: int | None = None
    ) -> float:
        seconds = await self._all(lambda s: s.load(version, config_text, delta), "load")
        return max(seconds)

    async def served_version(self) -> int | None:
        versions = await self._all(lambda s: s.served_version(), "list their models")
        return None if any(v is None for v in versions) else min(v for v in versions if v is not None)

    async def probe(self) -> int:
        return (await self.probe_state())[0]

    async def probe_state(self) -> tuple[int, int]:
        states = await self._all(lambda s: s.probe_state(), "answer")
        for server, state in zip(self.servers, states, strict=True):
            self._states[server.url].state = state
        return min(states)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.servers))
