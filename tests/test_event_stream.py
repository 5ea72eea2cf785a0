"""The live event stream (GET /v1/events) and long-polling a job (?wait=), over loopback HTTP."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from service.simulator import SimulatorConfig
from tests.conftest import assert_error_shape
from tests.e2e import TERMINAL, running_stack, submit_jobs, wait_terminal

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]

CONFIG = SimulatorConfig(latency_s=(0.2, 0.4), seed=5)
FINAL_EVENTS = {"job.succeeded", "job.failed", "job.cancelled"}


@dataclass(frozen=True)
class Sse:
    """One dispatched server-sent event: `id:`, `event:` and the parsed `data:`."""

    id: int
    type: str
    data: dict[str, Any]

    @property
    def job_id(self) -> str | None:
        return self.data["data"].get("id") if self.type.startswith("job.") else None


class EventReader:
    """The events of one open stream, parsed by a background task as they arrive."""

    def __init__(self, events: MemoryObjectReceiveStream[Sse]) -> None:
        self._events = events

    async def until(self, done: Callable[[list[Sse]], bool], *, timeout: float = 20) -> list[Sse]:
        """Events until `done(events so far)` holds; fails the test after `timeout`."""
        got: list[Sse] = []
        with anyio.fail_after(timeout):
            while not done(got):
                got.append(await self._events.receive())
        return got

    async def rest(self, *, idle: float) -> list[Sse]:
        """Events until none has come for `idle` seconds."""
        got: list[Sse] = []
        while True:
            with anyio.move_on_after(idle):
                got.append(await self._events.receive())
                continue
            return got


async def _parse(response: httpx.Response, send: MemoryObjectSendStream[Sse]) -> None:
    """text/event-stream framing: fields until a blank line, comments start with ':'."""
    fields: dict[str, str] = {}
    async with send:
        async for line in response.aiter_lines():
            if not line:
                if "data" in fields:
                    await send.send(Sse(int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                fields[name] = f"{fields[name]}\n{value}" if name == "data" and name in fields else value


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, *, params: dict[str, str] | None = None, last_event_id: str | None = None
) -> AsyncIterator[EventReader]:
    """GET /v1/events; leaving the block hangs up, as a client going away does."""
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    async with client.stream("GET", "/v1/events", params=params, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        send, receive = anyio.create_memory_object_stream[Sse](math.inf)
        async with receive, anyio.create_task_group() as group:
            group.start_soon(_parse, response, send)
            yield EventReader(receive)
            group.cancel_scope.cancel()


async def all_events(
    client: httpx.AsyncClient, *, until: Callable[[list[Sse]], bool] = lambda got: True, **params: str
) -> list[Sse]:
    """The log from the start (`?last_event_id=0`), with optional filters: read until `until`
    holds, then until nothing more comes (the backlog is sent at once, so that is its end)."""
    async with open_stream(client, params={"last_event_id": "0", **params}) as stream:
        return await stream.until(until) + await stream.rest(idle=0.3)


def count(n: int) -> Callable[[list[Sse]], bool]:
    return lambda got: len(got) >= n


def finals_of(job_ids: list[str]) -> Callable[[list[Sse]], bool]:
    """Done once every one of these jobs' final event has been read."""
    return lambda got: {e.job_id for e in got if e.type in FINAL_EVENTS} >= set(job_ids)


async def test_reconnecting_with_last_event_id_gets_every_missed_event_exactly_once(tmp_path):
    async with running_stack(tmp_path, CONFIG) as stack:
        client = stack.client
        earlier = await submit_jobs(client, 1)
        await wait_terminal(client, earlier, timeout=20)
        before = await all_events(client, until=finals_of(earlier))
        assert before and {e.job_id for e in before} == set(earlier)

        # Without Last-Event-ID the stream starts at "now": the earlier job's events never show.
        async with open_stream(client) as live:
            [watched] = await submit_jobs(client, 1)
            seen = await live.until(lambda got: any(e.type == "job.submitted" for e in got))
        # Gone: the watched job goes on and two more jobs run start to finish meanwhile.
        missed_jobs = await submit_jobs(client, 2)
        await wait_terminal(client, [watched, *missed_jobs], timeout=30)
        async with open_stream(client, last_event_id=str(seen[-1].id)) as resumed:
            missed = await resumed.until(finals_of([watched, *missed_jobs]))
            missed += await resumed.rest(idle=0.3)
        everything = await all_events(client, until=finals_of([*earlier, watched, *missed_jobs]))

    # The log itself has no holes: ids are 1..n, and each job's events are in its own order.
    assert [e.id for e in everything] == list(range(1, len(everything) + 1))
    for job_id in (*earlier, watched, *missed_jobs):
        mine = [e for e in everything if e.job_id == job_id]
        assert [e.data["sequence"] for e in mine] == list(range(1, len(mine) + 1))
        assert mine[0].type == "job.submitted" and mine[-1].type in FINAL_EVENTS
    assert {e.job_id for e in seen} == {watched}
    assert seen == everything[len(before) : len(before) + len(seen)]
    # Before the hang-up plus after the reconnect is exactly the rest of the log: no gap, no repeat.
    assert missed == everything[len(before) + len(seen) :]
    assert seen + missed == everything[len(before) :]
    assert {e.job_id for e in missed} == {watched, *missed_jobs}


async def test_job_and_type_filters_pick_only_matching_events(tmp_path):
    async with running_stack(tmp_path, CONFIG) as stack:
        client = stack.client
        ids = await submit_jobs(client, 3)
        await wait_terminal(client, ids, timeout=20)
        everything = await all_events(client, until=finals_of(ids))
        cases = {  # query -> which events of the whole log it must give, in log order
            (("job_id", ids[1]),): lambda e: e.job_id == ids[1],
            (("type", "job.succeeded"),): lambda e: e.type == "job.succeeded",
            (("type", "job.submitted,job.succeeded"),): lambda e: (
                e.type in ("job.submitted", "job.succeeded")
            ),
            (("job_id", ids[2]), ("type", "job.succeeded")): lambda e: (
                e.job_id == ids[2] and e.type == "job.succeeded"
            ),
            (("job_id", "job_that_does_not_exist"),): lambda e: False,
            (("type", "subscription.disabled"),): lambda e: False,
        }
        got = {}
        for query, keep in cases.items():
            wanted = [e for e in everything if keep(e)]
            got[query] = (await all_events(client, until=count(len(wanted)), **dict(query)), wanted)

    assert {e.type for e in everything} >= {"job.submitted", "job.succeeded"}
    for query, (streamed, wanted) in got.items():
        assert streamed == wanted, query
    succeeded = got[(("type", "job.succeeded"),)][0]
    assert sorted(e.job_id for e in succeeded) == sorted(ids)
    assert len(got[(("type", "job.submitted,job.succeeded"),)][0]) == 6
    assert len(got[(("job_id", ids[1]),)][0]) >= 2


async def test_a_resumed_filtered_stream_skips_what_came_before_the_given_id(tmp_path):
    async with running_stack(tmp_path, CONFIG) as stack:
        client = stack.client
        ids = await submit_jobs(client, 2)
        await wait_terminal(client, ids, timeout=20)
        everything = await all_events(client, until=finals_of(ids))
        middle = everything[len(everything) // 2].id
        job_id = everything[-1].job_id  # a job with events after the middle, whichever ended last
        wanted = [e for e in everything if e.id > middle and e.job_id == job_id]
        async with open_stream(client, params={"job_id": job_id}, last_event_id=str(middle)) as stream:
            resumed = await stream.until(count(len(wanted))) + await stream.rest(idle=0.3)

    assert wanted and resumed == wanted


BAD_STREAM_REQUESTS = [  # (query, headers, the field the 422 names)
    ({"type": "job.exploded"}, {}, "type"),
    ({"type": "job.succeeded,nope"}, {}, "type"),
    ({}, {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    ({}, {"Last-Event-ID": "-1"}, "Last-Event-ID"),
    ({"last_event_id": "1.5"}, {}, "Last-Event-ID"),
    ({"last_event_id": "\u00b2"}, {}, "Last-Event-ID"),  # superscript two: isdigit() yes, int() no
    ({"last_event_id": "\u0663"}, {}, "Last-Event-ID"),  # Arabic-Indic three: no id this stream sent
    ({"last_event_id": "9" * 30}, {}, "Last-Event-ID"),  # beyond any SQLite integer
    ({"last_event_id": "9" * 5000}, {}, "Last-Event-ID"),  # beyond what int() will parse
]


async def test_bad_stream_parameters_are_422_naming_the_field(tmp_path):
    async with running_stack(tmp_path, CONFIG) as stack:
        for params, headers, field in BAD_STREAM_REQUESTS:
            response = await stack.client.get("/v1/events", params=params, headers=headers)
            error = assert_error_shape(response, 422, "validation_failed")
            assert [d["field"] for d in error["details"]] == [field], (params, headers)


async def test_waiting_on_a_job_returns_its_terminal_document(tmp_path):
    async with running_stack(tmp_path, CONFIG) as stack:
        client = stack.client
        [job_id] = await submit_jobs(client, 1)
        waited = await client.get(f"/v1/jobs/{job_id}", params={"wait": "10"})
        assert waited.status_code == 200
        # It came back because the job finished, not because the ten seconds ran out.
        assert waited.json()["status"] in TERMINAL
        assert waited.json() == (await client.get(f"/v1/jobs/{job_id}")).json()
        # Already final: it answers at once with the same document.
        assert (await client.get(f"/v1/jobs/{job_id}", params={"wait": "60"})).json() == waited.json()
        for bad in ("abc", "999", "-1", "nan", "61"):
            response = await client.get(f"/v1/jobs/{job_id}", params={"wait": bad})
            error = assert_error_shape(response, 422, "validation_failed")
            assert [d["field"] for d in error["details"]] == ["wait"], bad
        assert_error_shape(await client.get("/v1/jobs/job_nope", params={"wait": "5"}), 404, "not_found")
