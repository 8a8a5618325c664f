"""Sorting PostgreSQL failures by SQLSTATE: a passing fault (retry) or a refusal for good."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions as pg
import pytest

from rankcore.errors import DependencyError, PermanentError, RejectedRequest
from updater.registry import is_unavailable, postgres_errors, translate

UNAVAILABLE: list[tuple[BaseException, str | None]] = [
    (pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), "08003"),
    (pg.ConnectionFailureError("connection failure"), "08006"),
    (pg.CannotConnectNowError("the database system is starting up"), "57P03"),
    (pg.AdminShutdownError("terminating connection due to administrator command"), "57P01"),
    (pg.CrashShutdownError("terminating connection because of crash of another server process"), "57P02"),
    (pg.TooManyConnectionsError("sorry, too many clients already"), "53300"),
    (pg.SerializationError("could not serialize access due to concurrent update"), "40001"),
    (pg.DeadlockDetectedError("deadlock detected"), "40P01"),
    (pg.QueryCanceledError("canceling statement due to statement timeout"), "57014"),
    (pg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"), "25006"),
    (OSError(111, "Connection refused"), None),
    (ConnectionResetError(104, "Connection reset by peer"), None),
    (TimeoutError(), None),
    (asyncpg.InterfaceError("cannot call Connection.fetchval(): connection has been released"), None),
    (asyncpg.InternalClientError("the pool is resetting a connection"), None),
]

PERMANENT: list[tuple[BaseException, str]] = [
    (pg.UniqueViolationError('duplicate key value violates unique constraint "x"'), "23505"),
    (pg.UndefinedColumnError('column "nope" does not exist'), "42703"),
    (pg.UndefinedTableError('relation "writer_lease" does not exist'), "42P01"),
    (pg.InvalidTextRepresentationError('invalid input syntax for type integer: "x"'), "22P02"),
    (pg.NumericValueOutOfRangeError("integer out of range"), "22003"),
    (pg.DataError("invalid input for query argument $2"), "22000"),
    (pg.InvalidPasswordError('password authentication failed for user "x"'), "28P01"),
]


@pytest.mark.parametrize(("exc", "sqlstate"), UNAVAILABLE, ids=[type(e).__name__ for e, _ in UNAVAILABLE])
def test_passing_faults_are_unavailable(exc: BaseException, sqlstate: str | None) -> None:
    if sqlstate is not None:
        assert getattr(type(exc), "sqlstate", None) == sqlstate  # asyncpg keeps it on the class
    assert is_unavailable(exc) is True
    err = translate(exc)
    assert type(err) is DependencyError
    assert str(err) == f"PostgreSQL: {type(exc).__name__}: {exc}"


@pytest.mark.parametrize(("exc", "sqlstate"), PERMANENT, ids=[type(e).__name__ for e, _ in PERMANENT])
def test_refusals_are_permanent(exc: BaseException, sqlstate: str) -> None:
    assert getattr(type(exc), "sqlstate", None) == sqlstate
    assert is_unavailable(exc) is False
    err = translate(exc)
    # A data exception (22) or a violated constraint (23) refuses that one operation; anything
    # else (no such table or column, a bad password) refuses every write alike.
    assert type(err) is (RejectedRequest if sqlstate[:2] in ("22", "23") else PermanentError)
    assert str(err) == f"PostgreSQL: {type(exc).__name__}: {exc} (SQLSTATE {sqlstate})"


def test_data_error_subclasses_share_their_class_prefix() -> None:
    assert issubclass(pg.InvalidTextRepresentationError, pg.DataError)
    assert pg.DataError.sqlstate == "22000"


def test_anything_else_is_permanent_without_a_sqlstate() -> None:
    assert is_unavailable(ValueError("bad")) is False
    err = translate(ValueError("bad"))
    assert type(err) is PermanentError and str(err) == "PostgreSQL: ValueError: bad"


def test_a_malformed_dsn_option_is_permanent_not_an_outage() -> None:
    # ClientConfigurationError is an InterfaceError (which otherwise means a lost connection).
    exc = asyncpg.ClientConfigurationError("invalid sslmode: 'sometimes'")
    assert isinstance(exc, asyncpg.InterfaceError)
    assert is_unavailable(exc) is False
    assert type(translate(exc)) is PermanentError


async def test_postgres_errors_translates_and_chains() -> None:
    cause = pg.AdminShutdownError("terminating connection due to administrator command")
    with pytest.raises(DependencyError) as down:
        async with postgres_errors():
            raise cause
    assert down.value.__cause__ is cause
    with pytest.raises(PermanentError, match=r"SQLSTATE 23505"):
        async with postgres_errors():
            raise pg.UniqueViolationError("duplicate key")
    with pytest.raises(KeyError):  # not a PostgreSQL error: untouched
        async with postgres_errors():
            raise KeyError("x")
