"""Where the model-control key comes from, and that it goes with control calls only."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.triton import CONTROL_KEY_ENV, GRPC_CONTROL_KEY_HEADER, TritonModel, control_key


def test_the_environment_wins_then_the_state_directory_then_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONTROL_KEY_ENV, raising=False)
    key_file = tmp_path / "triton.key"
    assert control_key(key_file) is None and control_key() is None
    key_file.write_text("from-file\n")
    assert control_key(key_file) == "from-file"
    monkeypatch.setenv(CONTROL_KEY_ENV, " from-env ")
    assert control_key(key_file) == "from-env"


def test_the_key_is_a_grpc_header_and_not_in_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONTROL_KEY_ENV, raising=False)
    assert TritonModel("localhost:1")._control is None
    model = TritonModel("localhost:1", key="s3cret")
    assert model._control == {GRPC_CONTROL_KEY_HEADER: "s3cret"}
    assert GRPC_CONTROL_KEY_HEADER == "triton-grpc-protocol-freshrank-key"
    assert "s3cret" not in repr(model)
