"""A labelled training example: what the joiner makes and the model learns from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled training example; ``action_ts_ms`` is 0 for negatives."""

    user_id: str
    query: str
    item_id: str
    category: str
    brand: str
    price: float
    label: int
    impression_ts_ms: int
    action_ts_ms: int
    request_id: str = ""
    title: str = ""  # the item's title the shopper saw ("" when unknown)
