"""The model server as the release side sees it: a small interface a test can swap.

:class:`exporter.triton.TritonModel` is the real one. Every call raises
:class:`rankcore.errors.DependencyError` when the server cannot be reached or refuses, so
callers handle one failure style for Triton, Kafka and PostgreSQL alike.
"""

from __future__ import annotations

from typing import Protocol


class ModelServer(Protocol):
    url: str

    async def ready(self) -> bool:
        """The server's own readiness answer."""
        ...

    async def load(
        self, version: int | None = None, config_text: str | None = None, delta: int | None = None
    ) -> float:
        """(Re)load the model, the newest version (``None``) or exactly ``version`` (as cut, or with
        the deltas up to ``delta`` applied); seconds taken."""
        ...

    async def served_version(self) -> int | None:
        """The newest version the server reports ready, or None."""
        ...

    async def probe(self) -> int:
        """The version that answers an inference request now."""
        ...

    async def probe_state(self) -> tuple[int, int]:
        """The (version, last delta applied) that answers an inference request now."""
        ...

    async def close(self) -> None: ...
