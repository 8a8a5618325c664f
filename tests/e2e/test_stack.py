"""The embedded stack listens on loopback only, unless told to listen elsewhere."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import psutil
import pytest

from freshrank.stack import Broker, EmbeddedStack, Triton

pytestmark = pytest.mark.e2e


def listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) of every socket ``pid`` and its children listen on; an IPv4-mapped
    IPv6 address (gRPC binds ``127.0.0.1`` as ``::ffff:127.0.0.1``) counts as its IPv4 address."""
    root = psutil.Process(pid)
    found: set[tuple[str, int]] = set()
    for proc in [root, *root.children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                ip = ipaddress.ip_address(conn.laddr.ip)
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                found.add((str(ip), conn.laddr.port))
    return found


def test_every_service_listens_on_loopback_only(shared_stack: EmbeddedStack) -> None:
    s = shared_stack
    assert s.triton.process is not None and s.triton.process.proc is not None
    assert s.broker.process.proc is not None
    triton = listening(s.triton.process.proc.pid)
    broker = listening(s.broker.process.proc.pid)
    # HTTP, gRPC and Triton's Prometheus metrics.
    assert triton == {
        ("127.0.0.1", p) for p in (s.triton.http_port, s.triton.grpc_port, s.triton.metrics_port)
    }
    assert broker == {("127.0.0.1", s.broker.port)}
    # PostgreSQL: a Unix socket in its data directory, no TCP address at all.
    postmaster = int((s.postgres.pgdata / "postmaster.pid").read_text().split()[0])
    assert listening(postmaster) == set()
    assert "host=" in s.postgres.dsn and str(s.postgres.pgdata) in s.postgres.dsn
    # What clients are told to dial.
    a = s.addresses
    assert a.bootstrap == f"127.0.0.1:{s.broker.port}"
    assert a.triton_grpc == f"127.0.0.1:{s.triton.grpc_port}"
    assert a.triton_http == f"127.0.0.1:{s.triton.http_port}"
    assert a.triton_metrics == f"http://127.0.0.1:{s.triton.metrics_port}/metrics"


def test_listening_elsewhere_is_explicit_and_stays_dialable(tmp_path: Path) -> None:
    every = EmbeddedStack(tmp_path, 19092, 18000, 18001, host="0.0.0.0")
    argv = every.broker.process.argv
    assert argv[argv.index("--listener-url") + 1] == "tcp://0.0.0.0:19092"
    # A client on this machine can dial loopback; 0.0.0.0 is no address to advertise.
    assert argv[argv.index("--advertised-listener-url") + 1] == "tcp://127.0.0.1:19092"
    assert every.broker.bootstrap == "127.0.0.1:19092"
    triton_argv = every.triton.argv(tmp_path)
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert f"{flag}=0.0.0.0" in triton_argv
    assert every.triton.grpc_url == "127.0.0.1:18001" and every.triton.http_url == "127.0.0.1:18000"

    one = Broker(tmp_path, 19093, host="10.1.2.3")  # one interface: advertised as itself
    assert one.bootstrap == "10.1.2.3:19093"
    told = Broker(tmp_path, 19094, host="0.0.0.0", advertised_host="broker.example")
    assert told.bootstrap == "broker.example:19094"
    assert Triton(tmp_path, tmp_path, 18002, 18003, host="::1").grpc_url == "[::1]:18003"

    default = EmbeddedStack(tmp_path, 19095, 18004, 18005)
    assert "--http-address=127.0.0.1" in default.triton.argv(tmp_path)
    listen = default.broker.process.argv
    assert listen[listen.index("--listener-url") + 1] == "tcp://127.0.0.1:19095"
