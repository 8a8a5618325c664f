"""WriterLease's decisions, with asyncpg.connect answering from a small fake PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import asyncpg.exceptions as pg
import pytest

from rankcore.errors import LeaseLost, PermanentError
from updater.lease import WriterLease

DSN = "postgresql://fake/registry"
MODEL = "ranker"


class FakePostgres:
    """The lease's view of PostgreSQL: one advisory lock and the writer_lease row's token.

    ``up=False``: connecting raises OSError. :meth:`restart` ends every session (their lock
    goes). ``fail``: SQL text fragment -> exception that query raises.
    """

    def __init__(self) -> None:
        self.up = True
        self.lock_holder: FakeConnection | None = None
        self.token: int | None = None
        self.fail: dict[str, BaseException] = {}
        self.connects = 0
        self.sessions: list[FakeConnection] = []
        self.latency_s = 0.0

    async def connect(self, dsn: str, **kwargs: Any) -> FakeConnection:
        assert dsn == DSN
        self.connects += 1
        if not self.up:
            raise ConnectionRefusedError(111, "Connection refused")
        conn = FakeConnection(self)
        self.sessions.append(conn)
        return conn

    def end_session(self, conn: FakeConnection) -> None:
        conn.server_closed = True
        if self.lock_holder is conn:
            self.lock_holder = None

    def restart(self, *, up: bool = True) -> None:
        for conn in self.sessions:
            self.end_session(conn)
        self.up = up


class FakeConnection:
    def __init__(self, server: FakePostgres) -> None:
        self.server = server
        self.server_closed = False  # the server ended the session
        self.client_closed = False  # closed or terminated on our side
        self.queries: list[str] = []
        self.busy = False

    def is_closed(self) -> bool:
        return self.client_closed or self.server_closed

    async def close(self) -> None:
        self.client_closed = True
        self.server.end_session(self)

    def terminate(self) -> None:
        self.client_closed = True
        self.server.end_session(self)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.queries.append(sql)
        if self.busy:
            # As asyncpg does: one query at a time per connection.
            raise pg.InterfaceError("cannot perform operation: another operation is in progress")
        self.busy = True
        try:
            await asyncio.sleep(self.server.latency_s)
        finally:
            self.busy = False
        if self.server_closed or not self.server.up:
            raise pg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        for fragment, exc in self.server.fail.items():
            if fragment in sql:
                raise exc
        if "pg_try_advisory_lock" in sql:
            assert args == (f"freshrank-writer:{MODEL}",)
            if self.server.lock_holder in (None, self):
                self.server.lock_holder = self
                return True
            return False
        if sql.startswith("SELECT token FROM writer_lease"):
            assert args == (MODEL,)
            return self.server.token
        if sql.startswith("INSERT INTO writer_lease"):
            self.server.token = (self.server.token or 0) + 1
            return self.server.token
        raise AssertionError(f"unexpected SQL: {sql}")


@pytest.fixture
def postgres(monkeypatch: pytest.MonkeyPatch) -> FakePostgres:
    server = FakePostgres()
    monkeypatch.setattr(asyncpg, "connect", server.connect)
    return server


async def test_takes_the_lease_with_token_1(postgres: FakePostgres) -> None:
    lease = WriterLease(DSN, MODEL, timeout_s=1.0)
    assert await lease.try_acquire() is True
    assert lease.token == 1 and postgres.token == 1
    assert postgres.lock_holder is postgres.sessions[0]
    assert await lease.confirm() is True  # same session, same token
    assert postgres.connects == 1


async def test_concurrent_confirms_share_one_session(postgres: FakePostgres) -> None:
    # The release task and the checkpoint both confirm; run at once on one connection they made
    # asyncpg refuse the second query, the lease re-took itself (token 2) and the other confirm
    # then read token 1 under the new holder: LeaseLost for the only updater (seen end to end).
    lease = WriterLease(DSN, MODEL, timeout_s=1.0)
    assert await lease.try_acquire() is True
    postgres.latency_s = 0.02
    assert await asyncio.gather(lease.confirm(), lease.confirm(), lease.confirm()) == [True, True, True]
    assert lease.token == 1 and postgres.token == 1
    assert postgres.connects == 1


async def test_a_second_updater_waits_while_the_lease_is_held(postgres: FakePostgres) -> None:
    first, second = WriterLease(DSN, MODEL, timeout_s=1.0), WriterLease(DSN, MODEL, timeout_s=1.0)
    assert await first.try_acquire() is True
    assert await second.try_acquire() is False
    assert second.token is None and postgres.token == 1
    assert postgres.sessions[1].client_closed is True  # the standby does not keep its session
    await first.release()
    assert postgres.lock_holder is None
    assert await second.try_acquire() is True and second.token == 2


async def test_postgres_away_during_confirm_carries_on_then_retakes(postgres: FakePostgres) -> None:
    lease = WriterLease(DSN, MODEL, timeout_s=1.0)
    assert await lease.try_acquire() is True

    # The connection drops mid-query: nobody can take the lock while PostgreSQL is away.
    postgres.up = False
    assert await lease.confirm() is True
    assert postgres.sessions[0].client_closed is True  # terminated
    # Still away (the session is gone, connecting fails): carry on.
    postgres.restart(up=False)
    assert await lease.confirm() is True
    assert lease.token == 1

    # Back, lock free: re-taken, and the token moved by exactly our own bump.
    postgres.restart(up=True)
    assert await lease.confirm() is True
    assert lease.token == 2 and postgres.token == 2
    assert postgres.lock_holder is postgres.sessions[-1]
    assert await lease.confirm() is True  # on the new session
    assert postgres.connects == 4  # the first, two refused (one per confirm while away), the new one


async def test_lease_lost_after_an_outage_when_another_holds_the_lock(postgres: FakePostgres) -> None:
    lease, other = WriterLease(DSN, MODEL, timeout_s=1.0), WriterLease(DSN, MODEL, timeout_s=1.0)
    assert await lease.try_acquire() is True
    postgres.restart()  # our session ends; the standby takes over meanwhile
    assert await other.try_acquire() is True and other.token == 2

    with pytest.raises(LeaseLost, match=r"another updater holds the writer lease for 'ranker' \(token 2\)"):
        await lease.confirm()
    assert postgres.lock_holder is postgres.sessions[1]  # the other one keeps it


async def test_lease_lost_when_the_token_moved_on_while_we_were_away(postgres: FakePostgres) -> None:
    lease, other = WriterLease(DSN, MODEL, timeout_s=1.0), WriterLease(DSN, MODEL, timeout_s=1.0)
    assert await lease.try_acquire() is True
    postgres.restart()
    assert await other.try_acquire() is True  # token 2 ...
    await other.release()  # ... and gone again: the lock is free when we come back

    with pytest.raises(LeaseLost, match=r"\(token 2\)"):
        await lease.confirm()
    assert postgres.token == 3  # we bumped it to take the lock, saw the gap, and let go
    assert postgres.lock_holder is None


async def test_lease_lost_when_the_token_changes_under_our_session(postgres: FakePostgres) -> None:
    lease = WriterLease(DSN, MODEL, timeout_s=1.0)
    assert await lease.try_acquire() is True
    postgres.token = 5  # someone rewrote the row
    with pytest.raises(LeaseLost, match="now has token 5, ours is 1"):
        await lease.confirm()


async def test_lock_held_under_our_own_token_skips_one_round(postgres: FakePostgres) -> None:
    lease = WriterLease(DSN, MODEL, timeout_s=1.0)
    assert await lease.try_acquire() is True
    # Our side lost the connection, but the server has not reaped that session yet: the lock
    # is held, under our token.
    postgres.sessions[0].client_closed = True

    assert await lease.confirm() is False
    assert lease.token == 1 and postgres.token == 1

    # Once the server ends the old session the lock is ours again.
    postgres.end_session(postgres.sessions[0])
    assert await lease.confirm() is True
    assert lease.token == 2


async def test_a_permanent_error_on_the_lease_query_is_not_an_outage(postgres: FakePostgres) -> None:
    lease = WriterLease(DSN, MODEL, timeout_s=1.0)
    assert await lease.try_acquire() is True
    postgres.fail["SELECT token FROM writer_lease"] = pg.UndefinedTableError(
        'relation "writer_lease" does not exist'
    )
    with pytest.raises(PermanentError, match=r"UndefinedTableError.*SQLSTATE 42P01"):
        await lease.confirm()


async def test_a_permanent_error_while_taking_the_lease_is_raised(postgres: FakePostgres) -> None:
    postgres.fail["INSERT INTO writer_lease"] = pg.UndefinedColumnError('column "holder" does not exist')
    lease = WriterLease(DSN, MODEL, timeout_s=1.0)
    with pytest.raises(PermanentError, match="SQLSTATE 42703"):
        await lease.try_acquire()
    assert lease.token is None
    assert postgres.sessions[0].client_closed is True


async def test_try_acquire_is_false_while_postgres_is_away(postgres: FakePostgres) -> None:
    postgres.up = False
    lease = WriterLease(DSN, MODEL, timeout_s=1.0)
    assert await lease.try_acquire() is False
    assert lease.token is None and postgres.connects == 1
