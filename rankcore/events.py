"""The event contract: parse one Kafka record into an :class:`Event` or a :class:`Rejection`.

Pure: no I/O. Every record ends in exactly one of the two; a rejection carries a specific
reason (one of :data:`REASONS`) so that dead letters can be counted and acted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")
ACTION_TYPES = frozenset(EVENT_TYPES[1:])

MAX_RECORD_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_QUERY_CHARS = 512
MAX_TITLE_CHARS = 512
# Timestamps outside [2000-01-01, now + 1 hour] are treated as corrupt.
MIN_TS_MS = 946_684_800_000
MAX_FUTURE_MS = 3600 * 1000

REASONS = (
    "empty_record",
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "unknown_type",
    "bad_timestamp",
    "orphan_action",
)


@dataclass(frozen=True, slots=True)
class Event:
    """A validated, normalised shop event."""

    event_id: str
    type: str
    ts_ms: int
    user_id: str
    request_id: str
    query: str
    item_id: str
    position: int
    category: str
    brand: str
    price: float
    device: str
    country: str
    title: str = ""  # item.title, when the event carries it (the catalogue takes it too)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record could not become an :class:`Event`; ``detail`` names the field."""

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def normalise_query(text: str) -> str:
    """Lower-case and collapse runs of spaces.

    The ONNX graph lower-cases and splits on spaces (only), so a raw query sent to Triton
    gives the same tokens as this form gives in training. Tabs and other whitespace stay
    inside tokens on both sides.
    """
    return " ".join(query_tokens(text.lower()))


def query_tokens(query: str) -> list[str]:
    """Tokens of an already normalised query, split exactly as the ONNX graph splits."""
    return [t for t in query.split(" ") if t]


def parse_ts(value: Any) -> int | None:
    """Epoch milliseconds from an int, a float or an ISO-8601 string with a zone; None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if dt.tzinfo is None:
            return None
        return int(dt.timestamp() * 1000)
    return None


def str_field(obj: dict[str, Any], name: str, required: bool, limit: int = MAX_ID_CHARS) -> str | Rejection:
    value = obj.get(name)
    if value is None:
        return Rejection("missing_field", name) if required else ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return Rejection("wrong_type", name)
    # Verbatim: clients send ids raw to Triton, which maps them as they are.
    text = str(value)
    if len(text) > limit:
        return Rejection("bad_value", f"{name} longer than {limit} characters")
    if required and not text:
        return Rejection("missing_field", name)
    return text


def json_object(raw: bytes | None) -> dict[str, Any] | Rejection:
    """One record value as a JSON object, or why it is not one (every topic's first check)."""
    if not raw:
        return Rejection("empty_record")
    if len(raw) > MAX_RECORD_BYTES:
        return Rejection("too_large", f"{len(raw)} bytes > {MAX_RECORD_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return Rejection("not_utf8")
        return Rejection("not_json", str(exc)[:120])
    if not isinstance(obj, dict):
        return Rejection("not_object", type(obj).__name__)
    return obj


def parse_event(raw: bytes | None, now_ms: int) -> Event | Rejection:
    """Validate and normalise one record value."""
    obj = json_object(raw)
    if isinstance(obj, Rejection):
        return obj
    event = _well_formed(obj, now_ms)
    if event is not None:
        return event
    return _checked(obj, now_ms)


_TYPES = frozenset(EVENT_TYPES)


def _well_formed(obj: dict[str, Any], now_ms: int) -> Event | None:
    """The common case in one pass: every field present, of its usual type and in range.

    Anything else returns None and goes through :func:`_checked`, which names what is wrong;
    an event accepted here is exactly the event :func:`_checked` would build. This is the
    consumer's hottest function, hence the flat, exact-type checks.
    """
    get = obj.get
    etype = get("type")
    event_id = get("event_id")
    user_id = get("user_id")
    request_id = get("request_id")
    item_id = get("item_id")
    query = get("query", "")
    ts = get("ts")
    position = get("position", 0)
    item = get("item") or {}
    context = get("context") or {}
    if not (
        type(etype) is str
        and etype in _TYPES
        and type(event_id) is str
        and type(user_id) is str
        and type(request_id) is str
        and type(item_id) is str
        and type(query) is str
        and type(ts) is int
        and type(position) is int
        and type(item) is dict
        and type(context) is dict
        and event_id
        and user_id
        and request_id
        and item_id
        and max(len(event_id), len(user_id), len(request_id), len(item_id)) <= MAX_ID_CHARS
        and len(query) <= MAX_QUERY_CHARS
        and MIN_TS_MS <= ts <= now_ms + MAX_FUTURE_MS
        and 0 <= position <= 10_000
        and (etype != "impression" or "position" in obj)
    ):
        return None
    category = item.get("category", "")
    brand = item.get("brand", "")
    price = item.get("price", 0.0)
    device = context.get("device", "")
    country = context.get("country", "")
    title = item.get("title", "")
    if not (
        type(category) is str
        and type(title) is str
        and len(title) <= MAX_TITLE_CHARS
        and type(brand) is str
        and type(device) is str
        and type(country) is str
        and max(len(category), len(brand), len(device), len(country)) <= MAX_ID_CHARS
        and type(price) in (float, int)
        and 0.0 <= price <= 1e9  # also false for NaN
    ):
        return None
    return Event(
        event_id=event_id,
        type=etype,
        ts_ms=ts,
        user_id=user_id,
        request_id=request_id,
        query=normalise_query(query),
        item_id=item_id,
        position=position,
        category=category,
        brand=brand,
        price=float(price),
        device=device,
        country=country,
        title=title,
    )


def _checked(obj: dict[str, Any], now_ms: int) -> Event | Rejection:
    """Every check in turn, so a rejection says which field is wrong and how."""

    etype = obj.get("type")
    if etype is None:
        return Rejection("missing_field", "type")
    if etype not in EVENT_TYPES:
        return Rejection("unknown_type", str(etype)[:40])

    fields: dict[str, str] = {}
    for name in ("event_id", "user_id", "request_id", "item_id"):
        value = str_field(obj, name, required=True)
        if isinstance(value, Rejection):
            return value
        fields[name] = value
    query = str_field(obj, "query", required=False, limit=MAX_QUERY_CHARS)
    if isinstance(query, Rejection):
        return query

    if "ts" not in obj:
        return Rejection("missing_field", "ts")
    ts_ms = parse_ts(obj["ts"])
    if ts_ms is None:
        return Rejection("wrong_type", "ts")
    if ts_ms < MIN_TS_MS or ts_ms > now_ms + MAX_FUTURE_MS:
        return Rejection("bad_timestamp", str(obj["ts"])[:40])

    position = obj.get("position", 0)
    if etype == "impression" and "position" not in obj:
        return Rejection("missing_field", "position")
    if isinstance(position, bool) or not isinstance(position, int):
        return Rejection("wrong_type", "position")
    if position < 0 or position > 10_000:
        return Rejection("bad_value", "position")

    item = obj.get("item") or {}
    context = obj.get("context") or {}
    if not isinstance(item, dict):
        return Rejection("wrong_type", "item")
    if not isinstance(context, dict):
        return Rejection("wrong_type", "context")
    extras: dict[str, str] = {}
    for parent, source, name in (
        ("item", item, "category"),
        ("item", item, "brand"),
        ("context", context, "device"),
        ("context", context, "country"),
    ):
        value = str_field(source, name, required=False)
        if isinstance(value, Rejection):
            return Rejection(value.reason, f"{parent}.{value.detail}")
        extras[name] = value
    title = str_field(item, "title", required=False, limit=MAX_TITLE_CHARS)
    if isinstance(title, Rejection):
        return Rejection(title.reason, f"item.{title.detail}")
    price = item.get("price", 0.0)
    if isinstance(price, bool) or not isinstance(price, int | float):
        return Rejection("wrong_type", "item.price")
    price = float(price)
    if not math.isfinite(price) or price < 0 or price > 1e9:
        return Rejection("bad_value", "item.price")

    return Event(
        event_id=fields["event_id"],
        type=etype,
        ts_ms=ts_ms,
        user_id=fields["user_id"],
        request_id=fields["request_id"],
        query=normalise_query(query),
        item_id=fields["item_id"],
        position=position,
        # Ids are kept verbatim: clients send them raw to Triton and the graph maps them as-is.
        category=extras["category"],
        brand=extras["brand"],
        price=price,
        device=extras["device"],
        country=extras["country"],
        title=title,
    )
