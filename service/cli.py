"""`fluxhook serve | worker | tick | simulator`: the process entry points."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import partial
from types import FrameType
from typing import Any

import anyio
import uvicorn

from service.errors import ConfigError
from service.settings import Settings

log = logging.getLogger("fluxhook")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fluxhook", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="web service with its workers in-process")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--no-workers", action="store_true",
                       help="serve the API only (run `fluxhook worker` separately)")
    commands.add_parser("worker", help="run only the workers")
    commands.add_parser("tick", help="run due work (at most FLUXHOOK_TICK_SECONDS), then exit (for cron)")
    sim = commands.add_parser("simulator", help="run the embedded provider simulator alone")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)

    try:
        if args.command == "simulator":
            return _simulator(args.host, args.port)
        settings = Settings.from_env(os.environ, host=getattr(args, "host", None),
                                     port=getattr(args, "port", None))
    except ConfigError as exc:
        print(f"fluxhook: configuration error: {exc}", file=sys.stderr)
        return 2
    _logging(settings.log_level)
    if args.command != "serve":
        # Only `serve` may build the public URL from its own host and port (service/address.py).
        from service.address import AddressUnknown, agreed_settings

        try:
            wait = args.command == "worker"  # a worker waits for the web process; tick cannot
            settings = anyio.run(partial(agreed_settings, settings, os.environ, wait=wait))
        except AddressUnknown as exc:
            print(f"fluxhook: {exc}", file=sys.stderr)
            return 2
    for warning in settings.warnings():
        log.warning("%s", warning)
    if args.command == "serve":
        return _serve(settings, run_workers=not args.no_workers)
    if args.command == "worker":
        return anyio.run(_worker, settings)
    return anyio.run(_tick, settings)


def _logging(level: str) -> None:
    from service.logs import configure_logging

    configure_logging(level)


def _serve(settings: Settings, *, run_workers: bool) -> int:
    from service.app import create_app

    simulator = None
    if settings.simulator:
        from service.simulator import SimulatorConfig, create_simulator_app

        simulator = create_simulator_app(SimulatorConfig.from_env(os.environ))
    app = create_app(settings, run_workers=run_workers, simulator=simulator)
    # access_log off: callback paths carry tokens, which must not reach a log. Open requests
    # (event streams included) get the same grace as the workers, which wind down meanwhile.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, lifespan="on",
                            timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)))
    _GracefulServer(config, on_exit=lambda: _stop_workers(app)).run()
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


async def _worker(settings: Settings) -> int:
    from service.address import follow_address
    from service.app import open_context
    from service.notifier import Notifier
    from service.retention import prune_periodically
    from service.worker import Worker

    async with open_context(settings) as ctx:
        log.info("fluxhook worker ready: %r", settings)
        stop = anyio.Event()
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as group:
                group.start_soon(follow_address, ctx, os.environ)
                group.start_soon(_stop_on_signals, signals, stop, group.cancel_scope)
                async with anyio.create_task_group() as loops:
                    loops.start_soon(Worker(ctx, stop=stop).run)
                    loops.start_soon(Notifier(ctx, stop=stop).run)
                    loops.start_soon(prune_periodically, ctx, stop)
                group.cancel_scope.cancel()
    return 0


async def _stop_on_signals(
    signals: AsyncIterator[signal.Signals], stop: anyio.Event, scope: anyio.CancelScope
) -> None:
    """The first signal stops claiming (work in flight gets the grace); a second stops now.
    Either way the loops hand back what they did not finish."""
    async for signum in signals:
        if stop.is_set():
            log.warning("%s again: stopping now", signum.name)
            scope.cancel()
            return
        log.info("%s: stopping; work in flight gets up to the shutdown grace", signum.name)
        stop.set()


async def _tick(settings: Settings) -> int:
    from service.app import open_context
    from service.tick import TickReport, tick

    report: TickReport | None = None
    async with open_context(settings) as ctx:
        stop = anyio.Event()
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as group:
                group.start_soon(_stop_on_signals, signals, stop, group.cancel_scope)
                report = await tick(ctx, seconds=settings.tick_s, stop=stop)
                group.cancel_scope.cancel()
    if report is None:  # a second signal: stopped at once, what was in flight handed back
        return 0
    log.info("tick: ran %d task(s), sent %d notification(s)%s; due now: %s; still scheduled: %s",
             report.tasks, report.deliveries, "" if report.finished else " (stopped before the end)",
             report.due_tasks or "none", report.scheduled_tasks or "none")
    return 0


def _simulator(host: str, port: int) -> int:
    from service.simulator import SimulatorConfig, create_simulator_app

    _logging(os.environ.get("FLUXHOOK_LOG_LEVEL", "info"))
    app = create_simulator_app(SimulatorConfig.from_env(os.environ))
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
