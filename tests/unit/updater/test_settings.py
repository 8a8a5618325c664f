from __future__ import annotations

from pathlib import Path

import pytest

from rankcore.errors import ConfigError
from updater.settings import UpdaterSettings


def test_settings_validate_with_clear_messages(tmp_path: Path) -> None:
    ok = dict(bootstrap="127.0.0.1:9092", pg_dsn="postgresql://x@/db", repository=tmp_path)
    UpdaterSettings(**ok)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected batch_size to be a positive integer, got 0"):
        UpdaterSettings(**ok, batch_size=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="HOST:PORT"):
        UpdaterSettings(**{**ok, "bootstrap": "kafka"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="device"):
        UpdaterSettings(**ok, device="tpu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="items topic other than the events topic"):
        UpdaterSettings(**ok, items_topic="events")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="vocab_expire_s >= 0"):
        UpdaterSettings(**ok, vocab_expire_s=-1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="measure_every"):
        UpdaterSettings(**ok, measure_every=-1)  # type: ignore[arg-type]
    assert UpdaterSettings(**ok, vocab_expire_s=0.0).vocab_expire_ms is None  # type: ignore[arg-type]
    assert UpdaterSettings(**ok).vocab_expire_ms == 3_600_000  # type: ignore[arg-type]
