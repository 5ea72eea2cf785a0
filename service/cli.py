"""`fluxhook serve | worker | tick | check | simulator`: the process entry points; and
`submit | jobs | job | watch`, the client of a running fluxhook (service/client_cli.py)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING

import anyio

from service.client_args import CLIENT_COMMANDS
from service.errors import ConfigError
from service.settings import Settings, log_settings

if TYPE_CHECKING:
    from service.simulator import SimulatorConfig

log = logging.getLogger("fluxhook")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        from service.client_cli import run_client

        return run_client(args, os.environ)
    if args.command == "check":
        return _check(args.host, args.port)
    try:
        if args.command == "simulator":
            return _simulator(args.host, args.port)
        settings = Settings.parse(os.environ, host=getattr(args, "host", None),
                                  port=getattr(args, "port", None))
        simulator = _simulator_config() if args.command == "serve" and settings.simulator else None
    except ConfigError as exc:
        return _refuse(f"configuration error: {exc}")
    _logging(settings.log_level, settings.log_format)
    listener = None
    try:
        if args.command == "serve":
            # Before anything else starts (migrations, workers, secrets): a taken address is
            # the first and only thing reported.
            listener = listen(settings.host, settings.port)
        settings = settings.prepared()
        anyio.run(_open_store_once, settings)
    except ConfigError as exc:
        if listener is not None:
            listener.close()
        return _refuse(f"cannot start: {exc}")
    if args.command != "serve":
        # Only `serve` may build the public URL from its own host and port (service/address.py).
        from service.address import AddressUnknown, agreed_settings

        try:
            wait = args.command == "worker"  # a worker waits for the web process; tick cannot
            settings = anyio.run(partial(agreed_settings, settings, os.environ, wait=wait))
        except AddressUnknown as exc:
            return _refuse(str(exc))
    from service.check import environment_warnings

    for warning in environment_warnings(os.environ) + settings.warnings():
        log.warning("%s", warning)
    if listener is not None:
        from service.serving import serve_app

        return serve_app(settings, listener, simulator, run_workers=not args.no_workers)
    if args.command == "worker":
        from service.event_loop import run_on_uvloop

        return run_on_uvloop(partial(_worker, settings, args.metrics_port, args.metrics_host))
    return anyio.run(_tick, settings)


def parser() -> argparse.ArgumentParser:
    """`fluxhook`'s commands and flags; the client's come from service/client_args.py."""
    version = argparse.ArgumentParser(add_help=False)
    version.add_argument("--version", action=VersionAction)
    top = argparse.ArgumentParser(prog="fluxhook", description=__doc__, parents=[version],
                                  formatter_class=HelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, description: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = commands.add_parser(
            name, help=description, description=description, parents=[version],
            formatter_class=HelpFormatter)
        return made

    serve = command("serve", "web service with its workers in-process")
    serve.add_argument("--host", help="address to listen on (default: FLUXHOOK_HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=int,
                       help="port to listen on (default: FLUXHOOK_PORT, else PORT, else 8000)")
    serve.add_argument("--no-workers", action="store_true",
                       help="serve the API only (run `fluxhook worker` separately)")
    worker = command("worker", "run only the workers")
    worker.add_argument("--metrics-port", type=int,
                        help="serve this worker's Prometheus counters at http://HOST:PORT/metrics "
                             "(default: none; the web process's /metrics has its own and the due work)")
    worker.add_argument("--metrics-host", default="127.0.0.1",
                        help="address for --metrics-port (default: 127.0.0.1; it has no API key)")
    command("tick", "run due work (at most FLUXHOOK_TICK_SECONDS), then exit (for cron)")
    check = command("check", "print the effective configuration (secrets masked); exit 2 if it is invalid")
    check.add_argument("--host", help="as for serve (default: FLUXHOOK_HOST, else 127.0.0.1)")
    check.add_argument("--port", type=int, help="as for serve (default: FLUXHOOK_PORT, else PORT, else 8000)")
    sim = command("simulator", "run the embedded provider simulator alone")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument("--port", type=int, default=8100, help="port to listen on")
    # Only argparse: the client's code is imported when one of its commands runs.
    from service.client_args import add_client_commands

    add_client_commands(commands, HelpFormatter, version)
    return top


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, unless it already names it; a description or
    epilog written on several lines (a table of exit codes) keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or "(required)" in text or action.default is argparse.SUPPRESS:
            return text
        if not action.option_strings and action.nargs != argparse.OPTIONAL:
            return text  # a required positional argument has no default
        if action.default is False:
            return f"{text} (default: off)"
        if action.default in (None, []):
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


class VersionAction(argparse.Action):
    """`--version`: the installed package's version, read only when asked (cold start)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str = "print fluxhook's version and exit") -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib.metadata import version

        print(f"fluxhook {version('fluxhook')}")
        parser.exit()


def _refuse(message: str) -> int:
    """Report why fluxhook cannot start, as a log line in the asked-for format; exit status 2."""
    if os.environ.get("FLUXHOOK_LOG_FORMAT", "").strip().lower() == "json":
        from service.logs import JsonFormatter

        record = logging.LogRecord("fluxhook", logging.ERROR, __file__, 0, message, None, None)
        print(JsonFormatter().format(record), file=sys.stderr)
    else:
        print(f"fluxhook: {message}", file=sys.stderr)
    return 2


def _check(host: str | None, port: int | None) -> int:
    from service.check import report

    lines, warnings, errors = report(os.environ, host=host, port=port)
    print("\n".join(lines))
    for warning in warnings:
        print(f"warning: {warning}")
    if errors:
        for error in errors:
            print(f"fluxhook: configuration error: {error}", file=sys.stderr)
        return 2
    print("configuration is valid")
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port`, for uvicorn to serve on; ConfigError naming the flag to
    change when the address is taken or not this machine's."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host!r}: {exc.strerror}; change it with --host "
                          "(or FLUXHOOK_HOST)") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no obstacle
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"address {host}:{port} is already in use (another fluxhook?); choose "
                              "another port with --port (or FLUXHOOK_PORT)") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; change it with --host "
                          "or --port (or FLUXHOOK_HOST, FLUXHOOK_PORT)") from None
    return sock


async def _open_store_once(settings: Settings) -> None:
    """Open (and migrate) the database, so one that cannot be reached is reported like a bad
    setting, not as a traceback from inside the server's start-up."""
    from service.stores import open_stores
    from storage.errors import StorageUnavailable

    try:
        store = await open_stores(settings)
    except StorageUnavailable as exc:  # its message never holds the password
        name = "FLUXHOOK_DATABASE_URL" if settings.uses_postgres else "FLUXHOOK_DATA_DIR"
        raise ConfigError(f"{name}: {exc}") from None
    await store.close()


def _simulator_config() -> SimulatorConfig:
    from service.simulator import SimulatorConfig
    from service.simulator.config import ENV_PREFIX, KnobError

    try:
        return SimulatorConfig.from_env(os.environ)
    except KnobError as exc:
        raise ConfigError(f"{ENV_PREFIX}{exc.knob.upper()}: {exc.message}") from None


def _logging(level: str, log_format: str) -> None:
    from service.logs import configure_logging

    configure_logging(level, log_format)


async def _worker(
    settings: Settings, metrics_port: int | None = None, metrics_host: str = "127.0.0.1"
) -> int:
    from service.address import follow_address
    from service.callbacks import apply_forever
    from service.notifier import Notifier
    from service.resources import open_context
    from service.retention import prune_periodically
    from service.worker import Worker

    async with open_context(settings) as ctx, AsyncExitStack() as stack:
        if metrics_port is not None:
            stack.callback(ctx.metrics.serve_process_metrics(metrics_port, metrics_host))
        log.info("fluxhook worker ready: %r", settings)
        stop = anyio.Event()
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as group:
                group.start_soon(follow_address, ctx, os.environ)
                group.start_soon(_stop_on_signals, signals, stop, group.cancel_scope)
                async with anyio.create_task_group() as loops:
                    loops.start_soon(apply_forever, ctx, stop)  # what a web process left recorded
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
    from service.resources import open_context
    from service.tick import TickReport, tick

    report: TickReport | None = None
    # No wake-ups from other processes: a tick runs what is due and exits, never waiting.
    async with open_context(settings, follow_wake_ups=False) as ctx:
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
    from service.serving import serve_simulator

    _logging(*log_settings(os.environ))
    serve_simulator(host, port, _simulator_config())
    return 0


if __name__ == "__main__":
    sys.exit(main())
