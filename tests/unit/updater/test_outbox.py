"""The registry outbox: a durable queue of PostgreSQL writes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from updater.outbox import OUTBOX_FILE, REJECTED_FILE, Outbox

DEAD = {"op": "dead_letter", "offset": 7, "raw": b"\x00\xff{", "key": None}
VERSION = {"op": "version", "version": 2, "metrics": {"auc": 0.71}}


def opened(directory: Path, **kwargs: int) -> Outbox:
    outbox = Outbox(directory, **kwargs)
    outbox.open()
    return outbox


def test_append_pending_and_drop_survive_reopening(tmp_path: Path) -> None:
    outbox = opened(tmp_path / "state")  # creates its directory
    assert len(outbox) == 0 and outbox.pending() == []
    outbox.append(DEAD)
    outbox.append(VERSION)
    assert outbox.pending() == [DEAD, VERSION]
    outbox.pending().clear()  # a copy: the caller cannot lose entries
    assert len(outbox) == 2
    again = opened(tmp_path / "state")
    assert again.pending() == [DEAD, VERSION]  # bytes come back as bytes
    again.drop(1)
    assert again.pending() == [VERSION]
    assert opened(tmp_path / "state").pending() == [VERSION]
    again.drop(1)
    assert opened(tmp_path / "state").pending() == []


def test_a_torn_last_line_is_dropped_on_open(tmp_path: Path) -> None:
    path = tmp_path / OUTBOX_FILE
    whole = orjson.dumps(VERSION) + b"\n"
    path.write_bytes(whole + b'{"op": "dead_letter", "off')  # a crash mid-append
    outbox = opened(tmp_path)
    assert outbox.pending() == [VERSION]
    assert path.read_bytes() == whole  # rewritten without the torn tail
    outbox.append(DEAD)
    assert opened(tmp_path).pending() == [VERSION, DEAD]


def test_set_aside_writes_the_rejected_file_and_leaves_the_queue(tmp_path: Path) -> None:
    outbox = opened(tmp_path)
    outbox.append(DEAD)
    outbox.set_aside(DEAD, "violates check constraint")
    outbox.set_aside(VERSION, "duplicate key")
    lines = (tmp_path / REJECTED_FILE).read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == [
        {"error": "violates check constraint", "op": {**DEAD, "raw": {"__b64__": "AP97"}}},
        {"error": "duplicate key", "op": VERSION},
    ]
    assert outbox.pending() == [DEAD]  # dropping it is the flusher's decision


def test_full_past_max_bytes_and_unstorable_values_refused(tmp_path: Path) -> None:
    outbox = opened(tmp_path, max_bytes=64)
    assert not outbox.full and outbox.size_bytes == 0
    outbox.append(VERSION)
    assert not outbox.full
    outbox.append(VERSION)
    assert outbox.full and outbox.size_bytes == 2 * len(orjson.dumps(VERSION) + b"\n")
    with pytest.raises(TypeError):
        outbox.append({"op": "version", "when": object()})
    assert len(outbox) == 2 and len(opened(tmp_path).pending()) == 2
