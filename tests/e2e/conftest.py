"""End-to-end fixtures: a real broker, PostgreSQL and Triton on free ports.

- ``shared_stack``: one stack for the whole session; a test uses it through ``lane``, its own
  topic, database, consumer group, state directory and model, removed when the test ends.
- ``stack``: a stack of the test's own, for tests that stop or kill a dependency, or measure
  one of its processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from exporter.publish import MODEL_NAME
from exporter.triton import GRPC_CONTROL_KEY_HEADER, control_key
from freshrank.bench.common import SMALL_MODEL
from freshrank.stack import EmbeddedStack, free_port
from tests.e2e.helpers import ITEMS_TOPIC, TOPIC, Lane
from updater.settings import UpdaterSettings
from updater.source import ensure_topic

pytestmark = pytest.mark.e2e

UNLOAD_TIMEOUT_S = 30.0
_lanes = itertools.count(1)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    async with EmbeddedStack(tmp_path / "stack", free_port(), free_port(), free_port()) as s:
        await ensure_topic(s.addresses.bootstrap, TOPIC, partitions=3)
        await ensure_topic(s.addresses.bootstrap, ITEMS_TOPIC, partitions=3)
        yield s


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    s = EmbeddedStack(tmp_path_factory.mktemp("shared") / "stack", free_port(), free_port(), free_port())
    s.start()
    try:
        yield s
    finally:
        s.stop()


def database_dsn(server_dsn: str, database: str) -> str:
    """``server_dsn`` with its database replaced (host, socket directory and user kept)."""
    parts = urlsplit(server_dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _unload(url: str, model: str) -> None:
    """Unload ``model`` from Triton and wait until it is gone (a no-op if it was never loaded)."""
    client = grpcclient.InferenceServerClient(url)
    control = {GRPC_CONTROL_KEY_HEADER: control_key() or ""}  # model control is restricted
    try:
        index = client.get_model_repository_index(headers=control, as_json=True, client_timeout=10)
        if not any(m.get("name") == model and m.get("state") for m in index.get("models", [])):
            return
        client.unload_model(model, headers=control, client_timeout=UNLOAD_TIMEOUT_S)
        deadline = time.monotonic() + UNLOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(InferenceServerException):
                if not client.is_model_ready(model, client_timeout=10):
                    return
            time.sleep(0.1)
        raise AssertionError(f"Triton still serves {model!r} {UNLOAD_TIMEOUT_S:.0f} s after unloading it")
    finally:
        client.close()


@pytest.fixture
async def lane(shared_stack: EmbeddedStack, tmp_path: Path) -> AsyncIterator[Lane]:
    """A fresh topic, database, consumer group, state directory and model on the shared stack.

    The model is ``ranker_<n>``, unloaded from Triton and removed from the repository afterwards.
    """
    n = next(_lanes)
    a = shared_stack.addresses
    database = f"lane_{n}"
    model = f"{MODEL_NAME}_{n}"
    topic = f"{TOPIC}_{n}"
    await ensure_topic(a.bootstrap, topic, partitions=3)
    await ensure_topic(a.bootstrap, f"{ITEMS_TOPIC}_{n}", partitions=3)
    admin = await asyncpg.connect(a.pg_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    try:
        yield Lane(
            stack=shared_stack,
            topic=topic,
            items_topic=f"{ITEMS_TOPIC}_{n}",
            pg_dsn=database_dsn(a.pg_dsn, database),
            state_dir=tmp_path / "updater",
            group=f"freshrank-{n}",
            model_name=model,
        )
    finally:
        await asyncio.to_thread(_unload, a.triton_grpc, model)
        shutil.rmtree(Path(a.repository) / model, ignore_errors=True)
        admin = await asyncpg.connect(a.pg_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., UpdaterSettings]:
    """Updater settings against a stack of the test's own or a lane, with small, fast knobs."""

    def make(target: EmbeddedStack | Lane, **overrides: Any) -> UpdaterSettings:
        if isinstance(target, Lane):
            a = target.stack.addresses
            lane: dict[str, Any] = dict(
                pg_dsn=target.pg_dsn,
                topic=target.topic,
                items_topic=target.items_topic,
                group=target.group,
                state_dir=target.state_dir,
                model_name=target.model_name,
            )
        else:
            a = target.addresses
            lane = dict(pg_dsn=a.pg_dsn, topic=TOPIC, items_topic=ITEMS_TOPIC, state_dir=tmp_path / "updater")
        values: dict[str, Any] = dict(
            bootstrap=a.bootstrap,
            repository=Path(a.repository),
            triton_grpc=a.triton_grpc,
            batch_size=64,
            max_wait_s=0.2,
            publish_interval_s=0.5,
            checkpoint_interval_s=1.0,
            window_ms=2_000,
            model=SMALL_MODEL,
            holdout_every=0,  # exact sample counts: nothing held out unless a test asks
            metrics_port=0,  # a test that scrapes asks for a port
            **lane,
        )
        values.update(overrides)
        return UpdaterSettings(**values)

    return make
