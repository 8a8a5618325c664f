from __future__ import annotations

import pytest

from rankcore.vocab import OOV, PAD, Vocab


def test_vocab_without_expiry_grows_until_full_then_shares_oov() -> None:
    v = Vocab("item", capacity=4)
    assert v.add("") == PAD
    assert v.add("a") == 2 and v.add("b") == 3 and v.add("a") == 2
    assert v.full
    assert v.add("c", now_ms=10**12) == OOV and v.overflow == 1 and v.evictions == 0
    assert v.get("zzz") == OOV and v.get("b") == 3
    assert v.keys() == ["a", "b"]
    copy = v.copy()
    v2 = Vocab.from_state(v.state())
    assert v2.keys() == ["a", "b"] and v2.overflow == 1
    assert copy.keys() == ["a", "b"]


def test_vocab_copy_is_independent() -> None:
    v = Vocab("item", capacity=10)
    v.add("a")
    c = v.copy()
    v.add("b")
    assert c.keys() == ["a"]


def test_vocab_capacity_validated() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Vocab("user", 2)


def test_a_full_vocab_gives_the_row_of_an_expired_id_to_a_new_one() -> None:
    v = Vocab("item", capacity=5, expire_ms=1_000)  # rows 2, 3, 4
    assert [v.add(k, 0) for k in ("a", "b", "c")] == [2, 3, 4]
    v.add("a", 500)  # "a" seen again: "b" is now the least recently seen
    assert v.add("d", 900) == OOV  # "b" idle 900 ms: not expired, the new id shares OOV
    assert v.get("c") == 4  # reading (serving, judging) does not count as seen
    assert v.add("d", 1_200) == 3 and v.get("b") == OOV
    assert v.keys() == ["a", "d", "c"] and v.evictions == 1 and v.overflow == 1
    assert v.take_recycled() == [3] and v.take_recycled() == []
    restored = Vocab.from_state(v.state(), expire_ms=1_000)
    assert restored.keys() == ["a", "d", "c"]
    assert restored.add("e", 1_300) == 4  # "c" was the least recently seen, in the checkpoint too
    copy = v.copy()
    assert copy.add("e", 1_300) == 4 and v.get("c") == 4
    with pytest.raises(ValueError, match="expiry"):
        Vocab("item", 5, expire_ms=-1)


def test_a_checkpoint_from_before_expiry_restores_in_arrival_order() -> None:
    old = {"name": "item", "capacity": 4, "keys": ["a", "b"], "overflow": 3}
    v = Vocab.from_state(old, expire_ms=0)
    assert v.keys() == ["a", "b"] and v.overflow == 3
    assert v.add("c", 5) == 2  # "a" arrived first


def test_tracked_changes_hold_each_keys_latest_row_for_serving() -> None:
    v = Vocab("item", capacity=4, expire_ms=1_000)  # rows 2 and 3
    assert v.add("a", 0) == 2 and v.take_changes() == []  # not tracking: nothing kept
    v.tracking = True
    v.add("b", 0)
    v.add("a", 500)  # seen again: no change
    assert v.take_changes() == [("b", 3)]
    # Full: "c" takes the row of "b" (idle the longest, past the expiry), which maps to OOV.
    assert v.add("c", 1_600) == 3
    assert v.take_changes() == [("b", OOV), ("c", 3)]
    assert v.take_changes() == []
