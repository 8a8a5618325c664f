"""The updater's HTTP endpoint (aiohttp, on the updater's event loop, loopback by default).

- ``/metrics``: Prometheus text (:class:`~updater.metrics.UpdaterMetrics`);
- ``/``: the live dashboard (``updater/dashboard/``, its charts drawn with the vendored uPlot);
- ``/api/dashboard``: what the page polls once a second (:func:`updater.history.dashboard`).

Handlers run on the loop, so a scrape reads the updater's state between two steps of its
tasks, never halfway through one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from rankcore.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9468
DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"


class WebEndpoint:
    """``start()`` binds ``host:port`` (0: a free port; :attr:`port` says which); ``stop()``,
    safe twice, closes it."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Callable[[], bytes],
        dashboard: Callable[[], dict[str, Any]],
    ) -> None:
        self.host = host
        self.port = port
        self._metrics = metrics
        self._dashboard = dashboard
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/api/dashboard", self._get_dashboard)
        app.router.add_get("/", self._get_page)
        app.router.add_static("/static", DASHBOARD_DIR, append_version=False)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"expected {self.host}:{self.port} to be free for the metrics endpoint "
                f"(--metrics-port; 0 turns it off), got {exc}"
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])  # the one bound when 0 was asked for
        log.info("metrics at %smetrics, dashboard at %s", self.url, self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> WebEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _get_metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._metrics())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _get_dashboard(self, request: web.Request) -> web.Response:
        body = orjson.dumps(self._dashboard(), option=orjson.OPT_SERIALIZE_NUMPY)
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})

    async def _get_page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(DASHBOARD_DIR / "index.html")
