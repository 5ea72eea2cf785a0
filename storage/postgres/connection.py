"""A psycopg connection that reads like a `sqlite3.Connection`, so a transaction body written
for SQLite runs unchanged on PostgreSQL wherever its SQL is portable.

- `?` placeholders become psycopg's `%s`, and a literal `%` becomes `%%`; quoted strings,
  quoted identifiers, comments and dollar-quoted bodies keep their `?` (`to_format`).
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
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import RowMaker

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


def row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    # psycopg calls this for every statement's result, rows or not. Its `description` makes a
    # Column object per column each time (~150 in a job's success transaction, a third of a
    # millisecond): the names are read from the result itself, and each set's index made once.
    result = cursor.pgresult
    names = tuple((result.fname(i) or b"").decode() for i in range(result.nfields)) if result else ()
    index = _INDEXES.get(names)
    if index is None:
        index = {}
        for position, name in enumerate(names):
            index.setdefault(name, position)
            index.setdefault(name.lower(), position)
        if len(_INDEXES) < _INDEXES_KEPT:  # the statements' column lists: a few dozen
            _INDEXES[names] = index

    def make(values: Sequence[Any]) -> Row:
        return Row(index, values)

    return make


_INDEXES: dict[tuple[str, ...], dict[str, int]] = {}
_INDEXES_KEPT = 1024


def _has_rows(cursor: psycopg.Cursor[Any]) -> bool:
    """Whether the statement's result has columns (a SELECT, a RETURNING), without building
    psycopg's `description`."""
    result = cursor.pgresult
    return result is not None and result.nfields > 0


class Cursor:
    """The part of `sqlite3.Cursor` that transaction bodies use."""

    def __init__(self, cursor: psycopg.Cursor[Row], conn: Connection) -> None:
        self._cursor = cursor
        self._conn = conn

    @property
    def rowcount(self) -> int:
        return self._result().rowcount

    @property
    def lastrowid(self) -> int:
        raise NotImplementedError("PostgreSQL has no lastrowid: use INSERT ... RETURNING and fetchone()")

    def fetchone(self) -> Row | None:
        cursor = self._result()
        return cursor.fetchone() if _has_rows(cursor) else None

    def fetchall(self) -> list[Row]:
        cursor = self._result()
        return cursor.fetchall() if _has_rows(cursor) else []

    def fetchmany(self, size: int) -> list[Row]:
        cursor = self._result()
        return cursor.fetchmany(size) if _has_rows(cursor) else []

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())

    def _result(self) -> psycopg.Cursor[Row]:
        """The psycopg cursor once its statement's result is in (waited for, when pipelined)."""
        self._conn.wait_for(self._cursor)
        return self._cursor


class Connection:
    """A psycopg connection behind the part of `sqlite3.Connection`'s API the bodies use."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn  # for what only PostgreSQL has (LISTEN, COPY, ...)
        self.statements = 0  # statements sent on it
        self.answered = False  # whether any result has come back: until then nothing was done
        self.round_trips = 0  # waits for the server's answer: what a body costs in latency
        self._pipeline: psycopg.Pipeline | None = None
        self._unsynced = False  # statements sent in the pipeline whose results are not in

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        cursor = self.raw.cursor(row_factory=row_factory)
        cursor.execute(to_format(sql), _adapt(params))
        self._sent()
        return Cursor(cursor, self)

    def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> Cursor:
        cursor = self.raw.cursor(row_factory=row_factory)
        cursor.executemany(to_format(sql), [_adapt(params) for params in seq_of_params])
        self._sent()
        return Cursor(cursor, self)

    def _sent(self) -> None:
        self.statements += 1
        if self._pipeline is None:
            self.answered = True
            self.round_trips += 1
        else:
            self._unsynced = True

    @contextmanager
    def pipelined(self) -> Iterator[None]:
        """Send statements without waiting for each result (see the module docstring); every
        result is in, and any error raised, by the end of the block."""
        with self.raw.pipeline() as pipeline:
            self._pipeline = pipeline
            try:
                yield
            finally:
                self._pipeline = None
                if self._unsynced:  # the block's end waits for what is still outstanding
                    self.round_trips += 1
                    self._unsynced = False
        self.answered = True

    def wait_for(self, cursor: psycopg.Cursor[Any]) -> None:
        """Until `cursor`'s statement has its result (at once when not pipelined)."""
        if self._pipeline is not None and cursor.pgresult is None:
            self._pipeline.sync()
            self.answered = True
            self.round_trips += 1
            self._unsynced = False


def _adapt(params: Params) -> tuple[Any, ...]:
    if isinstance(params, dict):
        raise TypeError("named parameters are not supported: use ? placeholders")
    return tuple(int(value) if isinstance(value, bool) else value for value in params)


# SQLite takes an empty list, `x IN ()` (false) and `x NOT IN ()` (true, even for NULL), which a
# body writes whenever it builds `IN ({marks})` from an empty list; PostgreSQL refuses the
# syntax. Comparing with an empty array means the same and takes x's type.
_EMPTY_NOT_IN = re.compile(r"\bNOT\s+IN\s*\(\s*\)", re.IGNORECASE)
_EMPTY_IN = re.compile(r"\bIN\s*\(\s*\)", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def to_format(sql: str) -> str:
    """`sql` with qmark placeholders (`?`) as psycopg's format ones (`%s`) and `%` as `%%`.

    A `?` inside a quoted string ('...'), a quoted identifier ("..."), a comment (-- or /* */)
    or a dollar-quoted body ($tag$...$tag$) is text, not a placeholder. `%` is doubled
    everywhere, since psycopg reads placeholders in the whole query text. An empty `IN ()` or
    `NOT IN ()` becomes a comparison with an empty array, which answers as SQLite does.
    """
    out: list[str] = []
    for is_code, text in _segments(sql):
        if is_code:
            text = _EMPTY_IN.sub("= ANY ('{}')", _EMPTY_NOT_IN.sub("<> ALL ('{}')", text))
            out.append(text.replace("%", "%%").replace("?", "%s"))
        else:
            out.append(text.replace("%", "%%"))
    return "".join(out)


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
