"""The PostgreSQL registry: every published version, and every dead letter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

# What a lost, stopping or restarting PostgreSQL raises through asyncpg. InternalClientError
# comes from the pool resetting a connection whose server went away mid-operation.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    model         text        NOT NULL,
    version       integer     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    status        text        NOT NULL,
    offsets       jsonb       NOT NULL,
    samples_seen  bigint      NOT NULL,
    metrics       jsonb       NOT NULL,
    path          text,
    size_bytes    bigint,
    sha256        text,
    reason        text,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          bigserial   PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    reason      text        NOT NULL,
    detail      text        NOT NULL DEFAULT '',
    key         bytea,
    raw         bytea,
    replayed_at timestamptz,
    UNIQUE (topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters (reason);
CREATE TABLE IF NOT EXISTS writer_lease (
    model       text        PRIMARY KEY,
    holder      text        NOT NULL,
    token       bigint      NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS serving (
    model       text        PRIMARY KEY,
    mode        text        NOT NULL,
    version     integer,
    reason      text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    key: bytes | None
    raw: bytes | None


_INSERT_DEAD_LETTER = (
    'INSERT INTO dead_letters (topic, partition, "offset", reason, detail, key, raw) '
    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
)
_INSERT_VERSION = (
    "INSERT INTO model_versions (model, version, status, offsets, samples_seen, metrics, path,"
    " size_bytes, sha256, reason) VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb, $7, $8, $9, $10)"
    " ON CONFLICT (model, version) DO UPDATE SET status = EXCLUDED.status, offsets = EXCLUDED.offsets,"
    " samples_seen = EXCLUDED.samples_seen, metrics = EXCLUDED.metrics, path = EXCLUDED.path,"
    " size_bytes = EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256, reason = EXCLUDED.reason,"
    " created_at = now()"
)


_UPSERT_SERVING = (
    "INSERT INTO serving (model, mode, version, reason) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (model) DO UPDATE SET mode = EXCLUDED.mode, version = EXCLUDED.version,"
    " reason = EXCLUDED.reason, updated_at = now()"
)


def dead_letters_op(letters: list[DeadLetter]) -> dict[str, Any]:
    return {
        "op": "dead_letters",
        "rows": [[d.topic, d.partition, d.offset, d.reason, d.detail, d.key, d.raw] for d in letters],
    }


def _jsonb(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


class Registry:
    """asyncpg pool over the registry tables; ``async with Registry(dsn)``."""

    def __init__(self, dsn: str, model: str = "ranker") -> None:
        self.dsn = dsn
        self.model = model
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("registry is not started")
        return self._pool

    async def start(self) -> None:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, command_timeout=30)
            # Two starters at once must not race on CREATE TABLE IF NOT EXISTS.
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(7243001)")
                await conn.execute(SCHEMA)

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def terminate(self) -> None:
        """Drop the pool at once, without waiting for connections (the server is gone)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def __aenter__(self) -> Registry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def apply(self, ops: list[dict[str, Any]]) -> None:
        """Apply queued write operations (see :mod:`updater.outbox`) in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            for op in ops:
                kind = op["op"]
                if kind == "dead_letters":
                    await conn.executemany(_INSERT_DEAD_LETTER, [tuple(row) for row in op["rows"]])
                elif kind == "add_version":
                    await conn.execute(
                        _INSERT_VERSION,
                        self.model,
                        op["version"],
                        op["status"],
                        _jsonb(op["offsets"]),
                        op["samples_seen"],
                        _jsonb(op["metrics"]),
                        op.get("path"),
                        op.get("size_bytes"),
                        op.get("sha256"),
                        op.get("reason"),
                    )
                elif kind == "mark_live":
                    await conn.execute(
                        "UPDATE model_versions SET status = 'retired' WHERE model = $1 AND status = 'live'"
                        " AND version <> $2",
                        self.model,
                        op["version"],
                    )
                    await conn.execute(
                        "UPDATE model_versions SET status = 'live', metrics = metrics || $3::jsonb"
                        " WHERE model = $1 AND version = $2",
                        self.model,
                        op["version"],
                        _jsonb(op.get("metrics") or {}),
                    )
                elif kind == "set_status":
                    await conn.execute(
                        "UPDATE model_versions SET status = $3, reason = $4"
                        " WHERE model = $1 AND version = $2",
                        self.model,
                        op["version"],
                        op["status"],
                        op.get("reason"),
                    )
                elif kind == "set_serving":
                    await conn.execute(
                        _UPSERT_SERVING, self.model, op["mode"], op.get("version"), op.get("reason")
                    )
                else:
                    raise ValueError(f"expected a registry operation, got {kind!r}")

    async def dead_letter_counts(self) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason ORDER BY reason"
        )
        return {r["reason"]: int(r["n"]) for r in rows}

    async def dead_letters(
        self, reason: str | None = None, limit: int = 100, not_replayed: bool = False
    ) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            'SELECT id, received_at, topic, partition, "offset", reason, detail, key, raw, replayed_at'
            " FROM dead_letters WHERE ($1::text IS NULL OR reason = $1)"
            " AND (NOT $3 OR replayed_at IS NULL) ORDER BY id LIMIT $2",
            reason,
            limit,
            not_replayed,
        )
        return [dict(r) for r in rows]

    async def mark_replayed(self, ids: list[int]) -> None:
        await self.pool.execute(
            "UPDATE dead_letters SET replayed_at = now() WHERE id = ANY($1::bigint[])", ids
        )

    async def count_published(self) -> int:
        """Versions that were published (served now, served before, or written and not loaded)."""
        value = await self.pool.fetchval(
            "SELECT count(*) FROM model_versions WHERE model = $1 AND status NOT IN ('rejected')", self.model
        )
        return int(value)

    async def max_version(self) -> int:
        value = await self.pool.fetchval(
            "SELECT max(version) FROM model_versions WHERE model = $1", self.model
        )
        return int(value or 0)

    async def versions(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT version, created_at, status, offsets, samples_seen, metrics, size_bytes, sha256, reason"
            " FROM model_versions WHERE model = $1 ORDER BY version DESC LIMIT $2",
            self.model,
            limit,
        )
        out = []
        for r in rows:
            row = dict(r)
            row["offsets"] = orjson.loads(row["offsets"])
            row["metrics"] = orjson.loads(row["metrics"])
            out.append(row)
        return out

    async def serving(self) -> dict[str, Any]:
        """What Triton should serve: ``mode`` latest, rolled_back or pinned, and the held ``version``."""
        row = await self.pool.fetchrow(
            "SELECT mode, version, reason FROM serving WHERE model = $1", self.model
        )
        return dict(row) if row is not None else {"mode": "latest", "version": None, "reason": None}

    async def set_serving(self, mode: str, version: int | None, reason: str | None) -> None:
        await self.apply([{"op": "set_serving", "mode": mode, "version": version, "reason": reason}])

    async def live_version(self) -> int | None:
        value = await self.pool.fetchval(
            "SELECT max(version) FROM model_versions WHERE model = $1 AND status = 'live'", self.model
        )
        return int(value) if value is not None else None
