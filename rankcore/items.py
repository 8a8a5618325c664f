"""The product-attribute contract: one Kafka record on ``items`` -> :class:`ItemUpdate` or
:class:`~rankcore.events.Rejection`.

Pure: no I/O. An update carries an item's latest ``title`` and, when they changed or are known,
its ``category``, ``brand``, ``price`` and free-form ``attributes``; a field left out keeps what
the catalogue knew (see :class:`rankcore.catalogue.Catalogue`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rankcore.events import (
    MAX_FUTURE_MS,
    MAX_ID_CHARS,
    MAX_TITLE_CHARS,
    MIN_TS_MS,
    Rejection,
    json_object,
    parse_ts,
    str_field,
)

MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY_CHARS = 64
MAX_ATTRIBUTE_VALUE_CHARS = 256


@dataclass(frozen=True, slots=True)
class ItemUpdate:
    """A validated item update; ``None`` means "not in this record"."""

    item_id: str
    ts_ms: int
    title: str
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    attributes: tuple[tuple[str, str], ...] | None = None


def parse_item(raw: bytes | None, now_ms: int) -> ItemUpdate | Rejection:
    """Validate one record value of the ``items`` topic."""
    obj = json_object(raw)
    if isinstance(obj, Rejection):
        return obj
    return item_update(obj, now_ms)


def item_update(obj: dict[str, Any], now_ms: int, where: str = "") -> ItemUpdate | Rejection:
    """An update from a JSON object (an ``items`` record, or an event's ``item`` with its
    ``item_id`` and ``ts`` filled in); ``where`` prefixes field names in rejections."""
    item_id = str_field(obj, "item_id", required=True)
    if isinstance(item_id, Rejection):
        return _at(item_id, where)
    if "ts" not in obj:
        return Rejection("missing_field", f"{where}ts")
    ts_ms = parse_ts(obj["ts"])
    if ts_ms is None:
        return Rejection("wrong_type", f"{where}ts")
    if ts_ms < MIN_TS_MS or ts_ms > now_ms + MAX_FUTURE_MS:
        return Rejection("bad_timestamp", str(obj["ts"])[:40])
    title = obj.get("title")
    if title is None:
        return Rejection("missing_field", f"{where}title")
    if not isinstance(title, str):
        return Rejection("wrong_type", f"{where}title")
    if len(title) > MAX_TITLE_CHARS:
        return Rejection("bad_value", f"{where}title longer than {MAX_TITLE_CHARS} characters")
    optional: dict[str, str | None] = {}
    for name in ("category", "brand"):
        if obj.get(name) is None:
            optional[name] = None
            continue
        value = str_field(obj, name, required=False, limit=MAX_ID_CHARS)
        if isinstance(value, Rejection):
            return _at(value, where)
        optional[name] = value
    price = obj.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float):
            return Rejection("wrong_type", f"{where}price")
        price = float(price)
        if not math.isfinite(price) or price < 0 or price > 1e9:
            return Rejection("bad_value", f"{where}price")
    attributes = _attributes(obj.get("attributes"), where)
    if isinstance(attributes, Rejection):
        return attributes
    return ItemUpdate(
        item_id=item_id,
        ts_ms=ts_ms,
        title=title,
        category=optional["category"],
        brand=optional["brand"],
        price=price,
        attributes=attributes,
    )


def _attributes(value: object, where: str) -> tuple[tuple[str, str], ...] | Rejection | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return Rejection("wrong_type", f"{where}attributes")
    if len(value) > MAX_ATTRIBUTES:
        return Rejection("bad_value", f"{where}attributes: more than {MAX_ATTRIBUTES}")
    out = []
    for key, text in value.items():
        if not isinstance(text, str):
            return Rejection("wrong_type", f"{where}attributes.{str(key)[:40]}")
        if len(key) > MAX_ATTRIBUTE_KEY_CHARS or len(text) > MAX_ATTRIBUTE_VALUE_CHARS:
            return Rejection(
                "bad_value",
                f"{where}attributes.{key[:40]}: keys up to {MAX_ATTRIBUTE_KEY_CHARS}, "
                f"values up to {MAX_ATTRIBUTE_VALUE_CHARS} characters",
            )
        out.append((key, text))
    return tuple(sorted(out))


def _at(rejection: Rejection, where: str) -> Rejection:
    return Rejection(rejection.reason, f"{where}{rejection.detail}") if where else rejection
