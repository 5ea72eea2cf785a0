"""`fluxhook serve | worker | tick | simulator`: the process entry points."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial

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
    commands.add_parser("tick", help="run every due piece of work once, then exit (for cron)")
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
    # access_log off: callback paths carry tokens, which must not reach a log.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False, lifespan="on")
    return 0


async def _worker(settings: Settings) -> int:
    from service.address import follow_address
    from service.app import open_context
    from service.notifier import Notifier
    from service.worker import Worker

    async with open_context(settings) as ctx:
        log.info("fluxhook worker ready: %r", settings)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as group:
                group.start_soon(Worker(ctx).run)
                group.start_soon(Notifier(ctx).run)
                group.start_soon(follow_address, ctx, os.environ)
                async for _ in signals:
                    group.cancel_scope.cancel()
                    break
    return 0


async def _tick(settings: Settings) -> int:
    from service.app import open_context
    from service.notifier import Notifier
    from service.worker import Worker

    async with open_context(settings) as ctx:
        ran = await Worker(ctx).drain()
        sent = await Notifier(ctx).drain()
        counts = await ctx.store.count_tasks()
    log.info("tick: ran %d task(s), sent %d notification(s); still scheduled: %s", ran, sent,
             counts or "none")
    return 0


def _simulator(host: str, port: int) -> int:
    from service.simulator import SimulatorConfig, create_simulator_app

    _logging(os.environ.get("FLUXHOOK_LOG_LEVEL", "info"))
    app = create_simulator_app(SimulatorConfig.from_env(os.environ))
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
