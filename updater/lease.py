"""One writer per model: a PostgreSQL advisory lock plus a fencing token.

The updater that holds the lock (on a connection of its own) is the only one that publishes;
a second updater started for the same model waits as a standby and takes over when the
first one's session ends (it died, or was stopped). Every new holder gets a larger token,
and each version records the token it was published under.

While PostgreSQL is unreachable nobody can take the lock, so the holder keeps publishing;
when the database is back it re-takes the lock, and if another updater held it in between
the old holder has been fenced off and must stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

import asyncpg

from rankcore.errors import LeaseLost
from updater.registry import POSTGRES_ERRORS, is_unavailable, translate

log = logging.getLogger(__name__)

DEFAULT_LEASE_TIMEOUT_S = 5.0
DEFAULT_POLL_S = 2.0


def _away(exc: BaseException) -> bool:
    """PostgreSQL is away (retry later); a permanent error is raised as such instead."""
    if not is_unavailable(exc):
        raise translate(exc) from exc
    return True


def _lock_key(model: str) -> str:
    return f"freshrank-writer:{model}"


class WriterLease:
    def __init__(
        self, dsn: str, model: str, timeout_s: float = DEFAULT_LEASE_TIMEOUT_S, poll_s: float = DEFAULT_POLL_S
    ) -> None:
        self.dsn = dsn
        self.model = model
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.token: int | None = None
        self._conn: asyncpg.Connection | None = None
        self._held_token: int | None = None
        # One question at a time: the release task and the checkpoint both confirm, and one
        # asyncpg connection runs one query at a time (a second one is refused, which looked
        # like a lost session and made the lease re-take itself under a race).
        self._lock = asyncio.Lock()

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; False when another updater does (or PostgreSQL is away)."""
        async with self._lock:
            return await self._take() is True

    async def _take(self) -> bool | None:
        """True: the lease is ours. False: another session holds the lock. None: PostgreSQL is away."""
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self.timeout_s, command_timeout=self.timeout_s)
        except POSTGRES_ERRORS as exc:
            _away(exc)
            return None
        try:
            got = await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", _lock_key(self.model))
            if not got:
                self._held_token = await conn.fetchval(
                    "SELECT token FROM writer_lease WHERE model = $1", self.model
                )
                await conn.close()
                return False
            previous = self.token
            self.token = int(
                await conn.fetchval(
                    "INSERT INTO writer_lease (model, holder, token) VALUES ($1, $2, 1)"
                    " ON CONFLICT (model) DO UPDATE SET token = writer_lease.token + 1,"
                    " holder = EXCLUDED.holder, acquired_at = now() RETURNING token",
                    self.model,
                    self.holder,
                )
            )
        except POSTGRES_ERRORS as exc:
            conn.terminate()
            _away(exc)
            log.warning("could not take the writer lease for %r: %s", self.model, exc)
            return None
        self._conn = conn
        if previous is not None and self.token != previous + 1:
            # Someone else held it while we were away: what we have is stale.
            await self._release()
            raise LeaseLost(
                f"another updater held the writer lease for {self.model!r} (token {self.token - 1})"
            )
        log.info("writer lease for %r taken with token %d", self.model, self.token)
        return True

    async def wait(self, stopping: asyncio.Event) -> bool:
        """Standby until the lease is ours (True) or ``stopping`` is set (False)."""
        first = True
        log.info("taking the writer lease for %r", self.model)
        while not stopping.is_set():
            if await self.try_acquire():
                return True
            if first:
                log.warning("another updater is the writer for %r; waiting as standby", self.model)
                first = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await stopping.wait()
        return False

    async def confirm(self) -> bool:
        """May this updater publish now? Raises :class:`LeaseLost` once another one is the writer.

        False means "not this time": the lock is held under our own token, by a session of ours
        the server has not reaped yet or by a standby that has not bumped the token yet. Either
        way nobody may be sure of being the only writer, so the caller skips one publish.
        """
        async with self._lock:
            return await self._confirm()

    async def _confirm(self) -> bool:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            try:
                async with asyncio.timeout(self.timeout_s):
                    token = await conn.fetchval("SELECT token FROM writer_lease WHERE model = $1", self.model)
            except POSTGRES_ERRORS as exc:
                conn.terminate()
                self._conn = None
                _away(exc)
            else:
                if token != self.token:
                    raise LeaseLost(
                        f"writer lease for {self.model!r} now has token {token}, ours is {self.token}"
                    )
                return True
        # Our session is gone. While PostgreSQL is away (or restarting) nobody else can take the
        # lock: carry on, and re-take it at the next publish.
        taken = await self._take()
        if taken is False:
            if self._held_token != self.token:
                raise LeaseLost(
                    f"another updater holds the writer lease for {self.model!r} (token {self._held_token})"
                )
            return False
        return True

    async def release(self) -> None:
        async with self._lock:
            await self._release()

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await conn.close()  # ends the session, which releases the advisory lock
        except POSTGRES_ERRORS:
            conn.terminate()  # the server ends the session (and the lock) when it notices


class NoLease:
    """For a training group's ranks above 0: they learn and checkpoint their own state but never
    publish (rank 0 holds the writer lease for the group), so there is nothing to hold."""

    token: int | None = None

    async def wait(self, stopping: asyncio.Event) -> bool:
        return not stopping.is_set()

    async def confirm(self) -> bool:
        return True

    async def release(self) -> None:
        return None
