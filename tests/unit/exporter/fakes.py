"""Small stand-ins for the release side's tests: a model server over a real repository, and models.

:class:`FakeServer` implements :class:`exporter.server.ModelServer` over the version
directories a real :class:`exporter.publish.Publisher` writes; :func:`trained` makes tiny
rankers that are good (true labels) or bad (flipped labels) at a learnable task.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.release import Snapshot
from rankcore.errors import DependencyError
from rankcore.features import Vocabularies, encode
from rankcore.model import Ranker, RankerConfig
from rankcore.sample import Sample
from updater.learner import Learner

TINY = RankerConfig(
    user_capacity=50,
    token_capacity=50,
    item_capacity=50,
    category_capacity=8,
    brand_capacity=8,
    dim=4,
    hidden=8,
    max_tokens=2,
    text_dim=0,  # the release logic does not depend on the text tower (test_model_export covers it)
)
LOAD_S = 0.25  # what FakeServer.load reports, so recorded load times are exact


@dataclass(frozen=True)
class Load:
    """One call of :meth:`FakeServer.load`."""

    version: int | None
    config_text: str | None
    delta: int | None = None


class FakeServer:
    """A model server that serves the version directories of ``model_dir``.

    ``load(None)`` serves the newest numbered directory, ``load(v, config_text)`` exactly ``v``
    (Triton needs the config to pin one). ``probe()`` answers with what is served.
    ``served_version()`` lists the newest READY version; with ``stale_index`` it behaves as
    Triton right after a load that moved to an older version: the one served before is still
    listed READY, so it reports max(previous, current). ``down`` makes every call raise
    :class:`DependencyError`; ``load_delay_s`` makes loads take that long.
    """

    def __init__(
        self, model_dir: Path, *, down: bool = False, stale_index: bool = False, load_delay_s: float = 0.0
    ) -> None:
        self.url = "fake://triton"
        self.model_dir = Path(model_dir)
        self.down = down
        self.stale_index = stale_index
        self.load_delay_s = load_delay_s
        self.current: int | None = None
        self.previous: int | None = None
        self.loads: list[Load] = []
        self.probes = 0
        self.closes = 0

    def _check(self) -> None:
        if self.down:
            raise DependencyError(f"{self.url} is down")

    def _versions(self) -> list[int]:
        return sorted(int(p.name) for p in self.model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    async def ready(self) -> bool:
        self._check()
        return True

    async def load(
        self, version: int | None = None, config_text: str | None = None, delta: int | None = None
    ) -> float:
        self._check()
        if version is not None and config_text is None:
            raise ValueError("loading a specific version needs the model's config.pbtxt text")
        self.loads.append(Load(version, config_text, delta))
        if self.load_delay_s:
            await asyncio.sleep(self.load_delay_s)
        versions = self._versions()
        target = version if version is not None else (versions[-1] if versions else None)
        if target is None or target not in versions:
            raise DependencyError(f"{self.url} failed to load version {target}: no such directory")
        self.previous, self.current = self.current, target
        return LOAD_S

    async def served_version(self) -> int | None:
        self._check()
        if self.stale_index and self.previous is not None and self.current is not None:
            return max(self.previous, self.current)
        return self.current

    async def probe(self) -> int:
        self._check()
        self.probes += 1
        if self.current is None:
            raise DependencyError(f"{self.url} serves no version")
        return self.current

    async def probe_state(self) -> tuple[int, int]:
        return (await self.probe(), 0)

    async def close(self) -> None:
        self.closes += 1


# ----------------------------------------------------------------- models and samples


def task_sample(i: int, *, flipped: bool = False, request: str = "") -> Sample:
    """A learnable sample: items in category ``hot`` are clicked, those in ``cold`` are not."""
    hot = i % 2 == 0
    label = int(hot) ^ int(flipped)
    return Sample(
        f"u{i % 20}",
        "red shoes",
        f"i{i % 30}",
        "hot" if hot else "cold",
        "acme",
        10.0,
        label,
        1_000 + i,
        (1_000 + i) if label else 0,
        request or f"r{i}",
    )


def task_samples(n: int, *, flipped: bool = False, start: int = 0) -> list[Sample]:
    return [task_sample(i, flipped=flipped) for i in range(start, start + n)]


@dataclass
class Trained:
    model: Ranker
    vocabs: Vocabularies
    samples: list[Sample] = field(default_factory=list)


@functools.cache
def trained(*, flipped: bool = False, steps: int = 10, seed: int = 0) -> Trained:
    """A tiny ranker trained on :func:`task_samples` (``flipped``: on the opposite labels);
    ``steps=0`` gives an untrained one with its vocabularies grown over the same ids.

    Cached: releases only read a model, so tests share them. Trained on true labels it scores
    AUC 1.0 on :func:`task_samples`, on flipped ones 0.0.
    """
    learner, vocabs = Learner(TINY, device="cpu", seed=seed, sparse_lr=0.1, dense_lr=0.03), Vocabularies(TINY)
    samples = task_samples(120, flipped=flipped)
    batch = encode(samples, vocabs, TINY.max_tokens)
    for _ in range(steps):
        learner.learn(batch)
    return Trained(learner.frozen_copy(), vocabs, samples)


def snapshot(
    model: Trained,
    holdout: list[Sample] | None = None,
    fresh: list[int] | None = None,
    samples_trained: int = 120,
    metrics: dict[str, Any] | None = None,
) -> Snapshot:
    """A release snapshot of ``model``; ``holdout`` defaults to none (the gate has nothing to judge)."""
    return Snapshot(
        model=model.model,
        vocabs=model.vocabs,
        offsets={"events:0": samples_trained},
        samples_trained=samples_trained,
        metrics=dict(metrics or {"prequential_auc": 0.5}),
        parity_samples=model.samples[:16],
        holdout=list(holdout or []),
        fresh_action_ts_ms=list(fresh or []),
    )
