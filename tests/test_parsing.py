"""Untrusted numeric text."""

import pytest

from service.backoff import parse_retry_after
from service.parsing import parse_count


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("42", 42), (" 7 ", 7), ("²", None), ("٣", None), ("", None), (None, None),
    ("-1", None), ("1e3", None), ("9" * 19, None),
])
def test_parse_count_accepts_only_plain_ascii_digits(text, value):
    assert parse_count(text) == value


def test_retry_after_with_a_superscript_is_ignored_not_an_exception():
    assert parse_retry_after("²", now_ms=0) is None
    assert parse_retry_after("3", now_ms=0) == 3.0
