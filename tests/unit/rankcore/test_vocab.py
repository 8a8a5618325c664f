from __future__ import annotations

import pytest

from rankcore.vocab import OOV, PAD, Vocab


def test_vocab_grows_until_full_then_shares_oov() -> None:
    v = Vocab("item", capacity=4)
    assert v.add("") == PAD
    assert v.add("a") == 2 and v.add("b") == 3 and v.add("a") == 2
    assert v.full
    assert v.add("c") == OOV and v.overflow == 1
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
