"""The one JSON parser and the one serializer: every body, callback, provider answer and stored
document goes through `loads` and `dumps`.

Standard JSON only, as I-JSON (RFC 7493) narrows RFC 8259:
- UTF-8 text; no `NaN`, `Infinity` or `-Infinity` (Python's `json` accepts and writes them);
- well-formed Unicode: no lone UTF-16 surrogate (`"\\ud800"`), in a string or in a key;
- no NUL character (`"\\u0000"`), in a string or in a key: it means nothing in a prompt, an id
  or a name, and PostgreSQL's text cannot hold it, so refusing it here keeps both backends alike;
- member names unique within an object;
- a number literal at most `MAX_NUMBER_CHARS` characters, and finite (`1e400` is refused);
- nesting at most `MAX_DEPTH` arrays or objects deep, checked before parsing, so a body of
  100,000 `[` is refused without a `RecursionError`.

A refusal is one `JsonRefused` (service/errors.py), naming the path of the offending value (`metadata.a.b`,
`input.prompt`, `events[0]`; `""` for the whole document). `repair_text` turns a value stored
before these rules into one that obeys them (migration 5).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from service.errors import JsonRefused

__all__ = ["DOCUMENT_DEPTH", "MAX_DEPTH", "MAX_NUMBER_CHARS", "JsonRefused", "dumps", "dumps_bytes",
           "join", "loads", "repair_text"]

MAX_DEPTH = 64
# A document fluxhook writes around a client's value (an event's envelope around a job's
# metadata) nests a few levels deeper than the client could.
DOCUMENT_DEPTH = MAX_DEPTH + 8
MAX_NUMBER_CHARS = 64  # a 64-bit integer has 20; a double's shortest repr has at most 24


# Parsing -------------------------------------------------------------------------------------


class _Refusal:
    """What a parse hook leaves in place of a value it refuses, so the walk can name its path."""

    __slots__ = ("reason", "rule")

    def __init__(self, rule: str, reason: str) -> None:
        self.rule = rule
        self.reason = reason


class _Members(dict[str, Any]):
    """An object whose text repeated a member name (the first repeated name is kept)."""

    duplicate: str = ""


def _members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    marked = _Members(value)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked.duplicate = key
            break
        seen.add(key)
    return marked


def _parse_int(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        return _Refusal("number_too_long", f"a number may have at most {MAX_NUMBER_CHARS} characters")
    return int(text)


def _parse_float(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        return _Refusal("number_too_long", f"a number may have at most {MAX_NUMBER_CHARS} characters")
    value = float(text)
    if not math.isfinite(value):
        return _Refusal("number_range", "number is too large to represent (not finite)")
    return value


def _parse_constant(text: str) -> Any:
    return _Refusal("non_finite_literal", f"{text} is not JSON (JSON has no NaN or Infinity)")


# A string, or one bracket. Strings are skipped whole, so brackets inside them do not count.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_NUL = "string holds a NUL character (\\u0000)"
# An escaped surrogate, the only way a lone one can enter text decoded from UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH, refuse_nul: bool = True) -> Any:
    """Parse one JSON text under the rules above; JsonRefused names what broke which rule.
    `refuse_nul=False` reads back documents stored before NUL was refused."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRefused(f"not UTF-8 (byte {exc.start})", rule="utf-8") from exc
    else:
        text = data
        if not _well_formed(text):
            raise JsonRefused("text holds a lone UTF-16 surrogate", rule="utf-8")
    _check_depth(text, max_depth)
    try:
        value = json.loads(text, object_pairs_hook=_members, parse_int=_parse_int,
                           parse_float=_parse_float, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise JsonRefused(f"{exc.msg} at line {exc.lineno} column {exc.colno}", rule="json",
                          line=exc.lineno, column=exc.colno) from exc
    except RecursionError as exc:  # not reached: _check_depth bounds the nesting first
        raise JsonRefused(f"nested deeper than {max_depth}", rule="depth") from exc
    # A NUL can only arrive escaped: JSON refuses raw control characters in strings.
    _check_value(value, refuse_nul=refuse_nul and "\\u0000" in text)
    return value


def _check_depth(text: str, max_depth: int) -> None:
    if text.count("[") + text.count("{") <= max_depth:
        return
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        found = match.group()
        if found in "[{":
            depth += 1
            if depth > max_depth:
                raise JsonRefused(f"nested deeper than {max_depth} arrays or objects", rule="depth")
        elif found in "]}":
            depth -= 1


def _check_value(root: Any, *, refuse_nul: bool) -> None:
    """Find what the hooks marked, lone surrogates and repeated names; raise naming the path.

    Iterative, and depth is already bounded; a document with nothing suspicious costs one pass.
    """
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _Refusal):
            raise JsonRefused(value.reason, rule=value.rule, path=path)
        if isinstance(value, str):
            if not _well_formed(value):
                raise JsonRefused("string holds a lone UTF-16 surrogate", rule="unicode", path=path)
            if refuse_nul and "\x00" in value:
                raise JsonRefused(_NUL, rule="unicode", path=path)
        elif isinstance(value, dict):
            if isinstance(value, _Members):
                raise JsonRefused("member name appears twice in one object", rule="duplicate_key",
                                  path=join(path, value.duplicate))
            for key, item in value.items():
                if not _well_formed(key):
                    raise JsonRefused("member name holds a lone UTF-16 surrogate", rule="unicode",
                                      path=join(path, key))
                if refuse_nul and "\x00" in key:
                    raise JsonRefused(f"member name: {_NUL}", rule="unicode", path=join(path, key))
                stack.append((item, join(path, key)))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))


def _well_formed(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def join(prefix: str, name: str) -> str:
    """`prefix.name`, or either alone when the other is empty; an index joins as `prefix[0]`."""
    if not prefix or not name:
        return prefix or name
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


# Serializing ---------------------------------------------------------------------------------


def dumps(value: Any, *, path: str = "", sort_keys: bool = False, ensure_ascii: bool = False) -> str:
    """Compact JSON text, keys in their order; JsonRefused (naming `path`) for anything that
    would not read back under `loads`: NaN, infinities, lone surrogates, non-JSON types."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False,
                          sort_keys=sort_keys)
        text.encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
        raise _explain(value, path) from exc
    if ensure_ascii:  # only for hashes that must stay byte-identical to older releases
        return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys)
    return text


def dumps_bytes(value: Any, *, path: str = "") -> bytes:
    return dumps(value, path=path).encode("utf-8")


def _explain(root: Any, base: str) -> JsonRefused:
    """The refusal naming the first value `json.dumps` could not write (or would write wrong)."""
    stack: list[tuple[Any, str, int]] = [(root, base, 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > 4 * MAX_DEPTH:
            return JsonRefused("nested too deep to serialize", rule="depth", path=path)
        if isinstance(value, float) and not math.isfinite(value):
            return JsonRefused("NaN and infinities are not JSON", rule="number_range", path=path)
        if isinstance(value, str):
            if not _well_formed(value):
                return JsonRefused("string holds a lone UTF-16 surrogate", rule="unicode", path=path)
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return JsonRefused("member names must be strings", rule="type", path=path)
                if not _well_formed(key):
                    return JsonRefused("member name holds a lone UTF-16 surrogate", rule="unicode",
                                       path=join(path, key))
                stack.append((item, join(path, key), depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif value is not None and not isinstance(value, bool | int | float):
            return JsonRefused(f"{type(value).__name__} is not a JSON value", rule="type", path=path)
    return JsonRefused("value cannot be serialized as JSON", rule="type", path=base)


# Repair (for rows stored before these rules) --------------------------------------------------


def repair_text(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> str | None:
    """The JSON text with every value `loads` would refuse replaced: non-finite and over-long
    numbers by null, lone surrogates by U+FFFD, nesting past `max_depth` by null.

    None when `text` already obeys the rules (nothing to write) or is not JSON at all (left as
    it is: a repair that guessed could lose a client's data).
    """
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    try:
        loads(raw, max_depth=max_depth)
    except JsonRefused:
        pass
    else:
        return None if isinstance(text, str) or raw.encode("utf-8") == text else raw
    try:
        value = json.loads(raw, parse_int=_lenient_int, parse_constant=lambda _: None)
    except (ValueError, RecursionError):
        return None
    return dumps(_repaired(value, 0, max_depth))


def _lenient_int(text: str) -> int | None:
    return int(text) if len(text) <= MAX_NUMBER_CHARS else None


def _repaired(value: Any, depth: int, max_depth: int) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict | list) and depth >= max_depth:
        return None
    if isinstance(value, dict):
        return {_clean(k): _repaired(v, depth + 1, max_depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_repaired(v, depth + 1, max_depth) for v in value]
    return value


def _clean(text: str) -> str:
    # A surrogate pair that json.loads left as two halves is joined; a lone half becomes U+FFFD.
    if _well_formed(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")

