"""A psycopg connection that reads like a `sqlite3.Connection`, so a transaction body written
for SQLite runs unchanged on PostgreSQL wherever its SQL is portable.

- `?` placeholders become PostgreSQL's `$1`, `$2`, ...; quoted strings, quoted identifiers,
  comments and dollar-quoted bodies keep their `?` (`to_numbered`).
- Rows read like `sqlite3.Row`: by position (`row[0]`, unpacking) and by column name
  (`row["status"]`, case-insensitive as in SQLite), with `keys()`.
- `True`/`False` parameters are stored as 1/0, as sqlite3 does: the schema keeps SQLite's
  integer flags rather than PostgreSQL booleans.
- An empty `IN ()` / `NOT IN ()` (SQLite takes it, PostgreSQL does not) answers as in SQLite.
- `cursor.lastrowid` raises: PostgreSQL has no such thing; write `INSERT ... RETURNING id`.
- Inside `pipelined()`, a statement is sent without waiting for its result, which is waited for
  only when the body reads it (a row, `rowcount`); so the writes between two reads cost one
  round trip together, not one each. An error is raised where the next result is waited for,
  at the latest when the block ends; a body that raises rolls back all the same.

Statements go to libpq's pipeline directly (`psycopg.pq`), with psycopg's adapters for the
values both ways and its error classes, rather than through psycopg's cursors. A cursor's
`execute` in a pipeline waits on the socket and flushes after each statement: ~50 µs of CPU
per INSERT on the machine the benchmarks run on, against ~8 µs here, and a job runs ~45
statements. A statement run a second time on a connection is prepared there (`_Session`), so
the server plans it once, as psycopg's own preparing did after five runs.
"""

from __future__ import annotations

import contextlib
import functools
import re
import weakref
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.waiting import Ready, Wait, wait

Params = Sequence[Any]


class Row:
    """One result row, by position or by (case-insensitive) column name, like `sqlite3.Row`."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = tuple(values)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            try:
                position = self._index[key]
            except KeyError:
                try:
                    position = self._index[key.lower()]
                except KeyError:
                    raise IndexError(f"no such column: {key}") from None
            return self._values[position]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values and self._index == other._index
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))!r})"


def _column_index(result: pq.abc.PGresult) -> dict[str, int]:
    """Each column's position by name (and lower-cased name); made once per column list."""
    names = tuple((result.fname(i) or b"").decode() for i in range(result.nfields))
    index = _INDEXES.get(names)
    if index is None:
        index = {}
        for position, name in enumerate(names):
            index.setdefault(name, position)
            index.setdefault(name.lower(), position)
        if len(_INDEXES) < _INDEXES_KEPT:  # the statements' column lists: a few dozen
            _INDEXES[names] = index
    return index


_INDEXES: dict[tuple[str, ...], dict[str, int]] = {}
_INDEXES_KEPT = 1024


class Cursor:
    """The part of `sqlite3.Cursor` that transaction bodies use: one statement's result."""

    __slots__ = ("_conn", "_result", "_rows", "_taken")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._result: pq.abc.PGresult | None = None  # set once the server has answered
        self._rows: list[Row] | None = None
        self._taken = 0

    @property
    def rowcount(self) -> int:
        count = self._answer().command_tuples
        return -1 if count is None else count

    @property
    def lastrowid(self) -> int:
        raise NotImplementedError("PostgreSQL has no lastrowid: use INSERT ... RETURNING and fetchone()")

    def fetchone(self) -> Row | None:
        rows = self._loaded()
        if self._taken >= len(rows):
            return None
        self._taken += 1
        return rows[self._taken - 1]

    def fetchall(self) -> list[Row]:
        rows = self._loaded()
        rest, self._taken = rows[self._taken:], len(rows)
        return rest

    def fetchmany(self, size: int) -> list[Row]:
        rows = self._loaded()
        some = rows[self._taken:self._taken + size]
        self._taken += len(some)
        return some

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())

    def _answer(self) -> pq.abc.PGresult:
        if self._result is None:
            self._conn.sync()
        if self._result is None:  # its sync failed before any answer came: the connection is lost
            raise psycopg.OperationalError("the statement's result was lost with its connection")
        return self._result

    def _loaded(self) -> list[Row]:
        if self._rows is None:
            self._rows = self._conn.load_rows(self._answer())
        return self._rows


class _Prepare:
    """A PREPARE sent in the pipeline: its name is known on the connection once it succeeded."""

    __slots__ = ("key", "name")

    def __init__(self, key: tuple[bytes, tuple[int, ...]], name: bytes) -> None:
        self.key = key
        self.name = name


class _Session:
    """What one server connection has been told: the statements prepared on it, by query and
    parameter types, and how often each unprepared one has run."""

    PREPARE_AFTER = 2  # runs before a statement is prepared: one-off statements stay unnamed
    KEPT = 256  # prepared statements at most, per connection (lists `IN (?, ...)` vary)

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.transformer = Transformer(raw)
        self.prepared: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
        self.runs: dict[tuple[bytes, tuple[int, ...]], int] = {}
        self.named = 0

    def forget_prepared(self) -> None:
        """Prepare every statement anew (see `outdates_prepared`); the old ones stay on the
        server under names never used again, until the connection closes."""
        self.prepared.clear()
        self.runs.clear()


def outdates_prepared(error: psycopg.Error) -> bool:
    """Whether `error` says this connection's prepared statements no longer hold: a table one
    reads was altered since it was prepared (another process's migration: "cached plan must
    not change result type"), or they were deallocated behind the adapter's back (`DISCARD
    ALL`, `DEALLOCATE ALL`). The statement did nothing; prepared again, it will run."""
    return isinstance(error, psycopg.errors.InvalidSqlStatementName) or (
        isinstance(error, psycopg.errors.FeatureNotSupported) and "cached plan" in str(error))


_SESSIONS: weakref.WeakKeyDictionary[psycopg.Connection[Any], _Session] = weakref.WeakKeyDictionary()


def _session_of(raw: psycopg.Connection[Any]) -> _Session:
    session = _SESSIONS.get(raw)
    if session is None:
        session = _SESSIONS[raw] = _Session(raw)
    return session


class Connection:
    """A psycopg connection behind the part of `sqlite3.Connection`'s API the bodies use."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn  # for what only PostgreSQL has (LISTEN, COPY, ...)
        self.statements = 0  # statements sent on it
        self.answered = False  # whether any result has come back: until then nothing was done
        self.round_trips = 0  # waits for the server's answer: what a body costs in latency
        self._pgconn = conn.pgconn
        self._session = _session_of(conn)
        self._pipelined = False
        self._sent: list[Cursor | _Prepare] = []  # in the pipeline, not yet answered

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        if isinstance(params, dict):
            raise TypeError("named parameters are not supported: use ? placeholders")
        query, count = to_numbered(sql)
        if count != len(params):
            raise psycopg.ProgrammingError(
                f"the query has {count} placeholders but {len(params)} parameters were passed")
        if not self._pipelined:
            with self.pipelined():
                cursor = self._send(query, params)
                self.sync()
            return cursor
        return self._send(query, params)

    def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> _Many:
        return _Many([self.execute(sql, params) for params in seq_of_params])

    def _send(self, query: bytes, params: Params) -> Cursor:
        session = self._session
        tx = session.transformer
        values = tx.dump_sequence([int(v) if isinstance(v, bool) else v for v in params],
                                  [PyFormat.AUTO] * len(params)) if params else None
        types = tuple(tx.types or ()) if params else ()
        formats = tx.formats if params else None
        key = (query, types)
        name = session.prepared.get(key)
        if name is None and len(session.prepared) < session.KEPT:
            if len(session.runs) >= 4 * session.KEPT:  # counted statements that never came again
                session.runs.clear()
            runs = session.runs[key] = session.runs.get(key, 0) + 1
            if runs >= session.PREPARE_AFTER:
                session.named += 1
                name = b"_fh%d" % session.named  # never reused: a failed PREPARE leaves no clash
                self._pgconn.send_prepare(name, query, param_types=types or None)
                self._sent.append(_Prepare(key, name))
        if name is None:
            self._pgconn.send_query_params(query, values, param_types=types or None, param_formats=formats)
        else:
            self._pgconn.send_query_prepared(name, values, param_formats=formats)
        cursor = Cursor(self)
        self._sent.append(cursor)
        self.statements += 1
        return cursor

    @contextmanager
    def pipelined(self) -> Iterator[None]:
        """Send statements without waiting for each result (see the module docstring); every
        result is in, and any error raised, by the end of the block."""
        if self._pipelined:
            yield
            return
        pgconn = self._pgconn
        pgconn.enter_pipeline_mode()
        self._pipelined = True
        unwinding = False
        try:
            yield
            self.sync()
        except BaseException:
            unwinding = True
            if self._sent and pgconn.status != pq.ConnStatus.BAD:
                with contextlib.suppress(psycopg.Error):
                    self.sync()  # what the body raised is the error to raise, not this
            raise
        finally:
            self._pipelined = False
            self._leave_pipeline(unwinding)

    def _leave_pipeline(self, unwinding: bool) -> None:
        if self._pgconn.status == pq.ConnStatus.BAD:
            return  # the connection is lost: the pool replaces it
        try:
            self._pgconn.exit_pipeline_mode()
        except psycopg.Error:
            # Results are still outstanding (a read failed half-way): the connection cannot
            # be used again in a known state.
            self.raw.close()
            if not unwinding:
                raise

    def sync(self) -> None:
        """Wait for the results of every statement sent so far; raise the first error among
        them (the server skipped those sent after it)."""
        sent, self._sent = self._sent, []
        if not sent:
            return
        self._pgconn.pipeline_sync()
        self.round_trips += 1
        answers = wait(_answers(self._pgconn, len(sent)), self._pgconn.socket, interval=_WAIT_INTERVAL)
        self.answered = True
        error: psycopg.Error | None = None
        for item, result in zip(sent, answers, strict=True):
            status = result.status
            if isinstance(item, _Prepare):
                if status == pq.ExecStatus.COMMAND_OK:
                    self._session.prepared[item.key] = item.name
            else:
                item._result = result
            if status == pq.ExecStatus.FATAL_ERROR and error is None:
                error = psycopg.errors.error_from_result(result, encoding=self.raw.info.encoding)
        if error is None and any(r.status == pq.ExecStatus.PIPELINE_ABORTED for r in answers):
            error = psycopg.errors.PipelineAborted("pipeline aborted")
        if error is not None:
            if outdates_prepared(error):
                self._session.forget_prepared()
            raise error

    def load_rows(self, result: pq.abc.PGresult) -> list[Row]:
        """`result`'s rows, read with psycopg's loaders; none for a statement without columns."""
        if result.status != pq.ExecStatus.TUPLES_OK or not result.nfields:
            return []
        index = _column_index(result)
        tx = self._session.transformer
        tx.set_pgresult(result)
        return tx.load_rows(0, result.ntuples, lambda values: Row(index, values))


# How long a wait for the server sleeps at most before looking again (psycopg's own: it looks
# for signals then). Without it, psycopg's `wait` polls without sleeping.
_WAIT_INTERVAL = 0.1


class _Many:
    """What `executemany` returns: the rows each statement changed, together."""

    def __init__(self, cursors: list[Cursor]) -> None:
        self._cursors = cursors

    @property
    def rowcount(self) -> int:
        return sum(max(cursor.rowcount, 0) for cursor in self._cursors)


def _answers(pgconn: pq.abc.PGconn, expected: int) -> Generator[Wait, Ready | int, list[pq.abc.PGresult]]:
    """Send what is queued, then read one result for each of the `expected` commands sent and
    the sync that follows them (a statement's results end with a NULL; the sync's has none)."""
    while pgconn.flush():
        ready = yield Wait.RW
        if ready & Ready.R:
            pgconn.consume_input()
    answers: list[pq.abc.PGresult] = []
    first: pq.abc.PGresult | None = None
    while True:
        while pgconn.is_busy():
            yield Wait.R
            pgconn.consume_input()
        result = pgconn.get_result()
        if len(answers) == expected:
            assert result is not None and result.status == pq.ExecStatus.PIPELINE_SYNC, result
            return answers
        if result is None:  # the end of one command's results: keep its first
            assert first is not None
            answers.append(first)
            first = None
        elif first is None:
            first = result


# SQLite takes an empty list, `x IN ()` (false) and `x NOT IN ()` (true, even for NULL), which a
# body writes whenever it builds `IN ({marks})` from an empty list; PostgreSQL refuses the
# syntax. Comparing with an empty array means the same and takes x's type.
_EMPTY_NOT_IN = re.compile(r"\bNOT\s+IN\s*\(\s*\)", re.IGNORECASE)
_EMPTY_IN = re.compile(r"\bIN\s*\(\s*\)", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def to_numbered(sql: str) -> tuple[bytes, int]:
    """`sql` with qmark placeholders (`?`) numbered as PostgreSQL's (`$1`, `$2`, ...), encoded,
    and how many there are.

    A `?` inside a quoted string ('...'), a quoted identifier ("..."), a comment (-- or /* */)
    or a dollar-quoted body ($tag$...$tag$) is text, not a placeholder. An empty `IN ()` or
    `NOT IN ()` becomes a comparison with an empty array, which answers as SQLite does.
    """
    out: list[str] = []
    count = 0
    for is_code, text in _segments(sql):
        if is_code:
            text = _EMPTY_IN.sub("= ANY ('{}')", _EMPTY_NOT_IN.sub("<> ALL ('{}')", text))
            pieces = text.split("?")
            for piece in pieces[1:]:
                count += 1
                pieces[0] += f"${count}{piece}"
            text = pieces[0]
        out.append(text)
    return "".join(out).encode(), count


def _segments(sql: str) -> Iterator[tuple[bool, str]]:
    """`sql` cut into code (True) and quoted text or comments (False), in order."""
    i, n, code_from = 0, len(sql), 0
    while i < n:
        char = sql[i]
        end = -1
        if char in ("'", '"'):
            end = sql.find(char, i + 1)
            while end != -1 and sql.startswith(char, end + 1):  # '' and "" escape the quote
                end = sql.find(char, end + 2)
            end = n if end == -1 else end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end == -1 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end == -1 else end + 2
        elif char == "$" and (tag := _dollar_tag(sql, i)) is not None:
            end = sql.find(tag, i + len(tag))
            end = n if end == -1 else end + len(tag)
        if end == -1:
            i += 1
            continue
        if code_from < i:
            yield True, sql[code_from:i]
        yield False, sql[i:end]
        i = code_from = end
    if code_from < n:
        yield True, sql[code_from:]


def _dollar_tag(sql: str, i: int) -> str | None:
    """The `$tag$` opening a dollar-quoted string at `i`, or None (`$1` is not one)."""
    end = sql.find("$", i + 1)
    if end == -1:
        return None
    tag = sql[i + 1 : end]
    if tag and not (tag[0].isalpha() or tag[0] == "_"):
        return None
    if not all(c.isalnum() or c == "_" for c in tag):
        return None
    if i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_"):  # part of an identifier
        return None
    return sql[i : end + 1]
