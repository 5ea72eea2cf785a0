"""Rewrite calls on the one store of before into calls on its small stores (a merge aid).

Before storage/sqlite/, every store method hung off one object: `ctx.store.get_job(...)`. Now
each belongs to a store with one noun: `ctx.store.jobs.get_job(...)`. Run this over files written
against the old shape (a branch merged later): `python scripts/store_calls.py FILE...`. It also
moves the old imports (storage.store, storage.notifications, ...) to their new places; opening
the database is `service/stores.py open_stores(settings)` in service/, `Database.open` in tests.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

STORES = {
    "jobs": "get_job list_jobs get_outputs get_output get_attempts create_job record_observation "
            "record_callback named_tasks refute_task adopt_task record_outputs begin_submit record_submit",
    "uploads": "get_upload record_upload",
    "tasks": "next_due_at get_tasks count_tasks count_active claim_due_tasks release_tasks retry_task "
             "finish_task",
    "subscriptions": "create_subscription get_subscription list_subscriptions update_subscription "
                     "delete_subscription rotate_subscription_secret",
    "deliveries": "claim_due_deliveries release_deliveries record_delivery_attempt redeliver recover "
                  "list_deliveries pending_delivery_due",
    "events": "latest_event_seq list_events",
    "retention": "remove_job_outputs remove_old_outputs unreferenced_blobs forget_blobs prune_events "
                 "prune_callbacks prune_delivery_attempts",
    "addresses": "announce_address withdraw_address announced_address",
}
NOUN = {method: noun for noun, methods in STORES.items() for method in methods.split()}
CALL = re.compile(r"\bstore\.(" + "|".join(NOUN) + r")\b")
MOVED = {
    "from storage.sqlite_thread import": "from storage.sqlite.thread import",
    "from storage.migrations import": "from storage.sqlite.migrations import",
    "from storage.notifications import": "from storage.records import",
    "from storage.tasks import SubmitCaps": "from storage.records import SubmitCaps",
    "store._transact(": "store.transact(",
    "store._query(": "store.query(",
}
STORE_IMPORT = re.compile(r"^from storage\.store import ([^\n#]*?)(\s*#[^\n]*)?$", re.M)


def _store_import(match: re.Match[str]) -> str:
    names = [name.strip() for name in match.group(1).split(",")]
    comment = match.group(2) or ""
    records = [name for name in names if name not in ("Store", "_statements")]
    database = ["Database" if name == "Store" else name for name in names if name in ("Store", "_statements")]
    lines = []
    if records:
        lines.append(f"from storage.records import {', '.join(records)}{comment}")
    if database:
        lines.append(f"from storage.sqlite.database import {', '.join(database)}{comment}")
    return "\n".join(lines)


def rewrite(text: str) -> str:
    text = CALL.sub(lambda match: f"store.{NOUN[match.group(1)]}.{match.group(1)}", text)
    for old, new in MOVED.items():
        text = text.replace(old, new)
    text = STORE_IMPORT.sub(_store_import, text)
    return re.sub(r"\bStore\.open\(", "Database.open(", text)


def main(paths: list[str]) -> None:
    for name in paths:
        path = Path(name)
        before = path.read_text(encoding="utf-8")
        after = rewrite(before)
        if after != before:
            path.write_text(after, encoding="utf-8")
            print("rewrote", name)


if __name__ == "__main__":
    main(sys.argv[1:])
