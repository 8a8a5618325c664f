"""The PostgreSQL registry: every published version, and every dead letter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson

from exporter.publish import MODEL_NAME
from exporter.records import (
    AddDelta,
    AddVersion,
    MarkLive,
    RegistryOp,
    Serving,
    SetServing,
    SetStatus,
    from_dict,
    to_dict,
)
from rankcore.errors import DependencyError, FreshrankError, PermanentError, RejectedRequest
from updater.ingest import DeadLetter

# SQLSTATE classes of a passing fault: connection exception (08), operator intervention
# (57P: shutdown, crash, cannot connect now; 57014: a statement cancelled by a timeout),
# insufficient resources (53), transaction rollback (40: serialization failure, deadlock), and a
# server that is read-only for now (25006: a standby, or mid-failover). Every other is permanent.
TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P", "57014", "53", "40", "25006")
# Refusals of one operation's data: a data exception (22) or a violated constraint (23). Other
# permanent errors (no such table, no privilege, bad password) refuse every write alike.
REJECTED_SQLSTATE_PREFIXES = ("22", "23")
DEFAULT_TIMEOUT_S = 5.0


def is_unavailable(exc: BaseException) -> bool:
    """Did PostgreSQL fail in a way that retrying can mend (lost, stopping, restarting, busy)?

    OSError and timeouts (a server gone or not answering), asyncpg's InterfaceError (a closed
    connection) and InternalClientError (a pool resetting a connection whose server went away
    mid-operation) count, and server errors whose SQLSTATE is of a transient class.
    """
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return False  # a malformed DSN or option: no retry mends it
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "").startswith(TRANSIENT_SQLSTATE_PREFIXES)
    return False


def translate(exc: BaseException) -> FreshrankError:
    """The one error style of the adapters: DependencyError (retry may help), RejectedRequest (this
    request's data is refused for good) or PermanentError (every request is, until someone acts)."""
    detail = f"PostgreSQL: {type(exc).__name__}: {exc}"
    if is_unavailable(exc):
        return DependencyError(detail)
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None:
        return PermanentError(detail)
    if str(sqlstate).startswith(REJECTED_SQLSTATE_PREFIXES):
        return RejectedRequest(f"{detail} (SQLSTATE {sqlstate})")
    return PermanentError(f"{detail} (SQLSTATE {sqlstate})")


# What a registry call can raise through asyncpg; :func:`translate` sorts it.
POSTGRES_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


@contextlib.asynccontextmanager
async def postgres_errors() -> AsyncIterator[None]:
    """Re-raise what asyncpg raises as :class:`DependencyError` or :class:`PermanentError`."""
    try:
        yield
    except POSTGRES_ERRORS as exc:
        raise translate(exc) from exc


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
CREATE TABLE IF NOT EXISTS model_deltas (
    model         text        NOT NULL,
    seq           bigint      NOT NULL,
    created_at    timestamptz NOT NULL,
    offsets       jsonb       NOT NULL,
    samples_seen  bigint      NOT NULL,
    rows          integer     NOT NULL,
    keys          integer     NOT NULL,
    size_bytes    bigint      NOT NULL,
    PRIMARY KEY (model, seq)
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
ALTER TABLE serving ADD COLUMN IF NOT EXISTS delta bigint;
"""


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


# A restarted updater numbers on from the log: a seq written again is the newer delta.
_UPSERT_DELTA = (
    "INSERT INTO model_deltas (model, seq, created_at, offsets, samples_seen, rows, keys, size_bytes)"
    " VALUES ($1, $2, to_timestamp($3::float8 / 1000), $4::jsonb, $5, $6, $7, $8)"
    " ON CONFLICT (model, seq) DO UPDATE SET created_at = EXCLUDED.created_at,"
    " offsets = EXCLUDED.offsets, samples_seen = EXCLUDED.samples_seen, rows = EXCLUDED.rows,"
    " keys = EXCLUDED.keys, size_bytes = EXCLUDED.size_bytes"
)

_UPSERT_SERVING = (
    "INSERT INTO serving (model, mode, version, reason, delta) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (model) DO UPDATE SET mode = EXCLUDED.mode, version = EXCLUDED.version,"
    " reason = EXCLUDED.reason, delta = EXCLUDED.delta, updated_at = now()"
    # A conditional decision applies only over the one it replaces (with no row, nothing was decided).
    " WHERE $6::text IS NULL OR (serving.mode = $6 AND serving.version IS NOT DISTINCT FROM $7::integer)"
)


def dead_letters_op(letters: list[DeadLetter]) -> dict[str, Any]:
    """The outbox operation that stores ``letters`` (idempotent: one row per record)."""
    return {
        "op": "dead_letters",
        "rows": [[d.topic, d.partition, d.offset, d.reason, d.detail, d.key, d.raw] for d in letters],
    }


def _jsonb(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


def _decoded(rows: list[asyncpg.Record], *jsonb: str) -> list[dict[str, Any]]:
    """Rows as dictionaries, their ``jsonb`` columns parsed."""
    out = []
    for r in rows:
        row = dict(r)
        for column in jsonb:
            row[column] = orjson.loads(row[column])
        out.append(row)
    return out


class Registry:
    """asyncpg pool over the registry tables; ``async with Registry(dsn)``.

    Every call raises :class:`DependencyError` when PostgreSQL is unavailable (retry later)
    and :class:`PermanentError` when it refused the request for good.
    """

    def __init__(self, dsn: str, model: str = MODEL_NAME, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.dsn = dsn
        self.model = model
        self.timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None
        self._schema_ready = False

    @property
    def connected(self) -> bool:
        return self._pool is not None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DependencyError("PostgreSQL registry is not connected")
        return self._pool

    async def start(self) -> None:
        """Connect (once; again after :meth:`terminate`) and create the schema on the first connect."""
        if self._pool is not None:
            return
        async with postgres_errors():
            pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=4, command_timeout=self.timeout_s, timeout=self.timeout_s
            )
            try:
                if not self._schema_ready:
                    # Two starters at once must not race on CREATE TABLE IF NOT EXISTS.
                    async with pool.acquire() as conn, conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(7243001)")
                        await conn.execute(SCHEMA)
                    self._schema_ready = True
            except BaseException:
                pool.terminate()
                raise
        self._pool = pool

    async def stop(self) -> None:
        """Close the pool gently, then at once if connections are not released in time."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await pool.close()
        except POSTGRES_ERRORS:
            pool.terminate()

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
        async with postgres_errors(), self.pool.acquire() as conn, conn.transaction():
            for data in ops:
                if data.get("op") == "dead_letters":
                    await conn.executemany(_INSERT_DEAD_LETTER, [tuple(row) for row in data["rows"]])
                    continue
                try:
                    op = from_dict(data)
                except (TypeError, ValueError) as exc:
                    raise RejectedRequest(f"not a registry operation: {exc}") from exc
                await self._apply_one(conn, op)

    async def apply_ops(self, ops: list[RegistryOp]) -> None:
        await self.apply([to_dict(op) for op in ops])

    async def _apply_one(self, conn: asyncpg.Connection, op: RegistryOp) -> None:
        if isinstance(op, AddVersion):
            await conn.execute(
                _INSERT_VERSION,
                self.model,
                op.version,
                op.status,
                _jsonb(op.offsets),
                op.samples_seen,
                _jsonb(op.metrics),
                op.path,
                op.size_bytes,
                op.sha256,
                op.reason,
            )
        elif isinstance(op, MarkLive):
            await conn.execute(
                "UPDATE model_versions SET status = 'retired' WHERE model = $1 AND status = 'live'"
                " AND version <> $2",
                self.model,
                op.version,
            )
            await conn.execute(
                "UPDATE model_versions SET status = 'live', metrics = metrics || $3::jsonb"
                " WHERE model = $1 AND version = $2",
                self.model,
                op.version,
                _jsonb(op.metrics),
            )
        elif isinstance(op, SetStatus):
            await conn.execute(
                "UPDATE model_versions SET status = $3, reason = $4 WHERE model = $1 AND version = $2",
                self.model,
                op.version,
                op.status,
                op.reason,
            )
        elif isinstance(op, SetServing):
            await conn.execute(
                _UPSERT_SERVING,
                self.model,
                op.mode,
                op.version,
                op.reason,
                op.delta,
                op.over_mode,
                op.over_version,
            )
        elif isinstance(op, AddDelta):
            await conn.execute(
                _UPSERT_DELTA,
                self.model,
                op.seq,
                op.created_ms,
                _jsonb(op.offsets),
                op.samples_seen,
                op.rows,
                op.keys,
                op.size_bytes,
            )

    async def dead_letter_counts(self) -> dict[str, int]:
        async with postgres_errors():
            rows = await self.pool.fetch(
                "SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason ORDER BY reason"
            )
        return {r["reason"]: int(r["n"]) for r in rows}

    async def dead_letters(
        self, reason: str | None = None, limit: int = 100, not_replayed: bool = False
    ) -> list[dict[str, Any]]:
        async with postgres_errors():
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
        async with postgres_errors():
            await self.pool.execute(
                "UPDATE dead_letters SET replayed_at = now() WHERE id = ANY($1::bigint[])", ids
            )

    async def count_published(self) -> int:
        """Versions that were published (served now, served before, or written and not loaded)."""
        async with postgres_errors():
            value = await self.pool.fetchval(
                "SELECT count(*) FROM model_versions WHERE model = $1 AND status NOT IN ('rejected')",
                self.model,
            )
        return int(value)

    async def max_version(self) -> int:
        async with postgres_errors():
            value = await self.pool.fetchval(
                "SELECT max(version) FROM model_versions WHERE model = $1", self.model
            )
        return int(value or 0)

    async def versions(self, limit: int = 50) -> list[dict[str, Any]]:
        async with postgres_errors():
            rows = await self.pool.fetch(
                "SELECT version, created_at, status, offsets, samples_seen, metrics, size_bytes, sha256,"
                " reason FROM model_versions WHERE model = $1 ORDER BY version DESC LIMIT $2",
                self.model,
                limit,
            )
        return _decoded(rows, "offsets", "metrics")

    async def deltas(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """The deltas after sequence ``after``, oldest first, with the offsets each learned up to."""
        async with postgres_errors():
            rows = await self.pool.fetch(
                "SELECT seq, created_at, offsets, samples_seen, rows, keys, size_bytes FROM model_deltas"
                " WHERE model = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                self.model,
                after,
                limit,
            )
        return _decoded(rows, "offsets")

    async def serving(self) -> Serving:
        """What the server should serve: the newest version, or the one a rollback or a pin holds."""
        async with postgres_errors():
            row = await self.pool.fetchrow(
                "SELECT mode, version, reason, delta FROM serving WHERE model = $1", self.model
            )
        if row is None:
            return Serving()
        try:
            return Serving(row["mode"], row["version"], row["reason"], row["delta"])
        except ValueError as exc:
            raise RejectedRequest(f"the registry's serving row is not a serving decision: {exc}") from exc

    async def live_version(self) -> int | None:
        async with postgres_errors():
            value = await self.pool.fetchval(
                "SELECT max(version) FROM model_versions WHERE model = $1 AND status = 'live'", self.model
            )
        return int(value) if value is not None else None
