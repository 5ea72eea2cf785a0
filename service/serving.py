"""`fluxhook serve`'s HTTP server: fluxhook's app under uvicorn, which only `serve` (and the
standalone simulator) imports, so `fluxhook tick` and `fluxhook worker` start without it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from service.event_loop import EVENT_LOOP, run_leaving_open
from service.settings import Settings

if TYPE_CHECKING:
    from service.simulator import SimulatorConfig

log = logging.getLogger("fluxhook")


def serve_app(
    settings: Settings, listener: socket.socket, simulator_config: SimulatorConfig | None, *,
    run_workers: bool,
) -> int:
    """Serve fluxhook's app (and the simulator, when configured) on `listener` until stopped."""
    from service.app import create_app

    simulator = None
    if simulator_config is not None:
        from service.simulator import create_simulator_app

        simulator = create_simulator_app(simulator_config)
    app = create_app(settings, run_workers=run_workers, simulator=simulator)
    # access_log off: callback paths carry tokens, which must not reach a log. Open requests
    # (event streams included) get the same grace as the workers, which wind down meanwhile.
    # log_config None: uvicorn's own lines go through fluxhook's handler, in its format.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            log_config=None, access_log=False, lifespan="on", loop=EVENT_LOOP,
                            timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)))
    log.info("fluxhook listening on %s:%d", settings.host, settings.port)
    _GracefulServer(config, on_exit=lambda: _stop_workers(app)).run(sockets=[listener])
    return 0


def _stop_workers(app: Any) -> None:
    stop = getattr(app.state, "stop_workers", None)  # set by the lifespan once started
    if stop is not None:
        stop()


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM/SIGINT also tells the in-process workers to stop
    claiming at once, and a clean stop exits 0 (uvicorn re-raises the signal once it has shut
    down, so the process would otherwise die of it)."""

    def __init__(self, config: uvicorn.Config, *, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's `run`, except that the event loop is left open once everything has
        stopped (service/event_loop.py `run_leaving_open` says why)."""
        loop = (self.config.get_loop_factory() or asyncio.new_event_loop)()
        run_leaving_open(loop, self.serve(sockets=sockets))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)




def serve_simulator(host: str, port: int, config: SimulatorConfig) -> None:
    """The embedded provider simulator alone (`fluxhook simulator`)."""
    from service.simulator import create_simulator_app

    uvicorn.run(create_simulator_app(config), host=host, port=port, log_level="info", log_config=None,
                loop=EVENT_LOOP, access_log=False)
