"""The command-line client's commands and flags: `fluxhook submit | jobs | job | watch`.

Only argparse here: `fluxhook serve` and `tick` build these parsers too, and must not pay for
httpx (tests/test_client_cli.py). service/client_cli.py runs the commands.
"""

from __future__ import annotations

import argparse
from typing import Any

CLIENT_COMMANDS = ("submit", "jobs", "job", "watch")
JOB_STATUSES = ("queued", "submitted", "running", "succeeded", "failed", "cancelled")
PROGRESS_MODES = ("auto", "bar", "plain", "none")

EXIT_CODES = """\
exit status:
  0  done
  1  the job failed or was cancelled, or --timeout passed before it was final
  2  a bad command line, or the server refused the request (its message is printed)
  3  the server could not be reached, or failed (5xx)
  4  a downloaded image's sha256 is not the one the job states (nothing is kept)"""


def add_client_commands(commands: Any, formatter: type[argparse.HelpFormatter],
                        version: argparse.ArgumentParser) -> None:
    """The client's subcommands on `commands` (the subparsers of `fluxhook`); `version` is a
    parent parser holding the `--version` flag."""
    server = argparse.ArgumentParser(add_help=False)
    talk = server.add_argument_group("server")
    talk.add_argument(
        "--url", metavar="URL",
        help="the running fluxhook to talk to (default: FLUXHOOK_URL, else FLUXHOOK_PUBLIC_URL, "
             "else http://127.0.0.1:FLUXHOOK_PORT, port 8000 when that is unset too)")
    talk.add_argument(
        "--api-key", metavar="KEY",
        help="sent as 'Authorization: Bearer KEY', never in a URL nor printed; prefer the "
             "variable, since a flag shows in `ps` (default: FLUXHOOK_API_KEY, else none)")
    talk.add_argument("--http-timeout", metavar="SECONDS", type=_positive, default=30.0,
                      help="timeout of each request to the server")
    parents = [server, version]

    submit = commands.add_parser(
        "submit", parents=parents, formatter_class=formatter, epilog=EXIT_CODES,
        help="submit a job to a running fluxhook, show its progress, save its images",
        description="Submit a job to a running fluxhook (POST /v1/jobs), follow its progress on "
                    "the event stream (GET /v1/events, resumed after a dropped connection), then "
                    "download its images into --output-dir, each checked against the sha256 the "
                    "job states. Progress goes to stderr; the saved files' paths to stdout.")
    submit.add_argument("prompt", nargs="?",
                        help="the prompt, sent as input.prompt (default: none, for models that "
                             "take their input from --param)")
    submit.add_argument("--model", required=True,
                        help="the model, e.g. flux-pro-1.1; GET /v1/models lists them (required)")
    submit.add_argument("--provider", default="auto",
                        help="bfl, cometapi, apiframe, runcomfy, replicate or fal; auto: the first "
                             "configured provider serving the model, failing over to the next")
    submit.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="one more input field; VALUE is read as JSON when it is JSON "
                             "(1024, true, [1, 2], \"007\"), else as text (aspect_ratio=16:9); "
                             "repeat for more (default: none)")
    submit.add_argument("--width", type=int, help="input.width in pixels (default: the model's own)")
    submit.add_argument("--height", type=int, help="input.height in pixels (default: the model's own)")
    submit.add_argument("--seed", type=int, help="input.seed (default: the provider picks one)")
    submit.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="stored with the job and returned in its document and notifications; "
                             "VALUE read as for --param; repeat for more (default: none)")
    submit.add_argument("--idempotency-key", metavar="KEY",
                        help="sent as the Idempotency-Key header: submitting again with the same "
                             "key and body returns the same job, not a new one (and a new charge) "
                             "(default: none)")
    submit.add_argument("-o", "--output-dir", default=".", metavar="DIR",
                        help="where the images are saved (created if missing), each as "
                             "<job id>_<index>.<png|jpeg|webp>")
    submit.add_argument("--timeout", type=_positive, metavar="SECONDS",
                        help="stop waiting after this long, exit 1; the job carries on (default: "
                             "wait until the job is final)")
    submit.add_argument("--no-wait", action="store_true",
                        help="print the job as submitted and exit: no progress, no download")
    _progress(submit)
    submit.add_argument("--json", action="store_true",
                        help="print the final job and the saved files as one JSON object on stdout")

    jobs = commands.add_parser(
        "jobs", parents=parents, formatter_class=formatter, epilog=EXIT_CODES,
        help="list jobs, newest first (GET /v1/jobs)",
        description="List jobs, newest first (GET /v1/jobs), one line each.")
    jobs.add_argument("--status", choices=JOB_STATUSES, help="only jobs in this status (default: any)")
    jobs.add_argument("--limit", type=int, default=20, metavar="N", help="jobs per page, 1 to 100")
    jobs.add_argument("--cursor", help="the page after the one that printed this cursor (default: "
                                       "the newest jobs)")
    jobs.add_argument("--json", action="store_true",
                      help="print the page as the API answers it: {\"data\": [...], \"next_cursor\"}")

    job = commands.add_parser(
        "job", parents=parents, formatter_class=formatter, epilog=EXIT_CODES,
        help="show one job and its timeline",
        description="Show one job (GET /v1/jobs/ID) and its timeline: created, every submit "
                    "attempt, every event (GET /v1/events?job_id=ID) and every notification "
                    "delivery attempt (GET /v1/jobs/ID/deliveries), in order.")
    job.add_argument("job_id", metavar="ID", help="the job's id (job_...)")
    job.add_argument("--events-wait", type=_positive, default=1.0, metavar="SECONDS",
                     help="for a job not yet final, how long to wait for more of its events "
                          "before printing")
    job.add_argument("--json", action="store_true",
                     help="print {\"job\", \"events\", \"deliveries\"} as one JSON object")

    watch = commands.add_parser(
        "watch", parents=parents, formatter_class=formatter, epilog=EXIT_CODES,
        help="follow the event stream, one line per event",
        description="Follow the event stream (GET /v1/events), one line per event, resuming "
                    "after a dropped connection without missing or repeating one. Each line "
                    "starts with the event's id (#N), for --after.")
    watch.add_argument("--job", metavar="ID",
                       help="only this job's events, stopping once it is final (default: every job)")
    watch.add_argument("--type", action="append", default=[], metavar="TYPE",
                       help="only events of this type (job.submitted, job.running, job.progress, "
                            "job.succeeded, job.failed, job.cancelled, subscription.disabled); "
                            "repeat or comma-separate for more (default: every type)")
    watch.add_argument("--after", type=_count, metavar="ID",
                       help="start after this event id; 0 replays the log from its start "
                            "(default: only events from now on; with --job, all of that job's)")
    watch.add_argument("--count", type=_at_least_one, metavar="N",
                       help="stop after N events (default: follow until interrupted)")
    watch.add_argument("--timeout", type=_positive, metavar="SECONDS",
                       help="stop after this long (default: follow until interrupted)")
    watch.add_argument("--json", action="store_true",
                       help="print each event as one JSON object per line: its body and \"seq\"")


def _progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                        help="auto: a live status line and bar when stderr is a terminal, plain "
                             "lines when it is not; bar; plain: one line per change; none")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, got {text!r}")
    return int(text)


def _at_least_one(text: str) -> int:
    count = _count(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return count
