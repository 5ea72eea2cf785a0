"""The one JSON parser and serializer: known answers for every class of value it refuses."""

from __future__ import annotations

import json
import math

import pytest

from service.cursors import decode_cursor
from service.errors import MalformedRequest, ValidationFailed
from service.strict_json import (
    MAX_DEPTH,
    MAX_NUMBER_CHARS,
    JsonRefused,
    dumps,
    dumps_bytes,
    loads,
    repair_text,
)

# (case, JSON text, rule, path of the refused value, status of the API error)
REFUSED = [
    ("NaN", '{"metadata": {"a": NaN}}', "non_finite_literal", "metadata.a", 400),
    ("Infinity", '{"x": [1, Infinity]}', "non_finite_literal", "x[1]", 400),
    ("-Infinity", '{"x": -Infinity}', "non_finite_literal", "x", 400),
    ("NaN-alone", "NaN", "non_finite_literal", "", 400),
    ("overflowing-float", '{"input": {"guidance": 1e400}}', "number_range", "input.guidance", 422),
    ("overflowing-negative", '{"x": -1.5e999}', "number_range", "x", 422),
    ("5000-digit-int", '{"seed": ' + "9" * 5000 + "}", "number_too_long", "seed", 422),
    ("long-float", '{"x": 0.' + "1" * 100 + "}", "number_too_long", "x", 422),
    ("lone-high-surrogate", '{"input": {"prompt": "a \\ud800 fox"}}', "unicode", "input.prompt", 422),
    ("lone-low-surrogate", '["ok", "\\udc00"]', "unicode", "[1]", 422),
    ("reversed-pair", '{"p": "\\ude00\\ud83d"}', "unicode", "p", 422),
    ("surrogate-in-key", '{"metadata": {"\\ud800": 1}}', "unicode", "metadata.\\ud800", 422),
    ("duplicate-key", '{"a": {"b": 1, "b": 2}}', "duplicate_key", "a.b", 422),
    ("deep-arrays", "[" * 100_000, "depth", "", 400),
    ("deep-objects", '{"a":' * 100_000, "depth", "", 400),
    ("deep-but-closed", "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "depth", "", 400),
    ("syntax", '{"a": }', "json", "", 400),
    ("trailing-garbage", '{"a": 1} x', "json", "", 400),
]


@pytest.mark.parametrize(("case", "text", "rule", "path", "status"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_values_name_their_rule_and_path(case, text, rule, path, status):
    for data in (text, text.encode()):
        with pytest.raises(JsonRefused) as caught:
            loads(data)
        assert caught.value.rule == rule
        assert caught.value.path == path
        error = caught.value.as_api_error()
        assert error.status_code == status
        assert error.details[0]["field"] == (path or "(body)")
        assert error.details[0]["rule"] == rule
        # The error itself always serializes, even when it names a lone surrogate.
        dumps({"error": error.details})


def test_api_errors_are_malformed_for_text_and_validation_for_values():
    with pytest.raises(JsonRefused) as not_json:
        loads("[NaN]")
    with pytest.raises(JsonRefused) as bad_value:
        loads('["\\ud800"]')
    assert isinstance(not_json.value.as_api_error(), MalformedRequest)
    assert isinstance(bad_value.value.as_api_error("input"), ValidationFailed)
    assert bad_value.value.as_api_error("input").details[0]["field"] == "input[0]"


def test_bytes_that_are_not_utf8_are_refused():
    with pytest.raises(JsonRefused) as caught:
        loads(b'{"a": "\xff"}')
    assert caught.value.rule == "utf-8"


def test_a_str_holding_a_raw_lone_surrogate_is_refused():
    with pytest.raises(JsonRefused) as caught:
        loads('{"a": "\ud800"}')
    assert caught.value.rule == "utf-8"


@pytest.mark.parametrize("text", [
    '{"a": 1, "b": [true, false, null], "c": "caf\\u00e9 \\ud83d\\ude00"}',
    '{"big": ' + "9" * MAX_NUMBER_CHARS + ', "small": 1e-400, "neg": -0.0}',
    "[" * MAX_DEPTH + "]" * MAX_DEPTH,
    '"a string with [ brackets { inside \\" quotes ' + "[" * 200 + '"',
    '{"k": "x"}',
])
def test_standard_json_is_accepted_as_the_stdlib_reads_it(text):
    assert loads(text) == json.loads(text)


def test_accepted_values_keep_their_key_order():
    assert list(loads('{"z": 1, "a": 2, "m": 3}')) == ["z", "a", "m"]


@pytest.mark.parametrize(("value", "rule", "path"), [
    ({"a": math.nan}, "number_range", "input.a"),
    ({"a": [1, math.inf]}, "number_range", "input.a[1]"),
    ({"a": -math.inf}, "number_range", "input.a"),
    ({"prompt": "fox \ud800"}, "unicode", "input.prompt"),
    ({"\udc00": 1}, "unicode", "input.\\udc00"),
    ({"a": {1, 2}}, "type", "input.a"),
])
def test_dumps_refuses_what_would_not_read_back(value, rule, path):
    with pytest.raises(JsonRefused) as caught:
        dumps(value, path="input")
    assert (caught.value.rule, caught.value.path) == (rule, path)


def test_dumps_is_compact_utf8_and_keeps_order():
    assert dumps({"b": 1, "a": ["é", None, 1.5]}) == '{"b":1,"a":["é",null,1.5]}'
    assert dumps_bytes({"é": 1}) == '{"é":1}'.encode()
    assert dumps({"b": 1, "a": "é"}, sort_keys=True, ensure_ascii=True) == '{"a":"\\u00e9","b":1}'


def test_dumps_refuses_a_cycle_without_recursing_forever():
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(JsonRefused) as caught:
        dumps(cycle)
    assert caught.value.rule == "depth"


@pytest.mark.parametrize(("stored", "repaired"), [
    ('{"a":NaN,"b":Infinity,"c":-Infinity}', {"a": None, "b": None, "c": None}),
    ('{"a":1e400}', {"a": None}),
    ('{"a":"x\\ud800y"}', {"a": "x\ufffdy"}),
    ('{"\\udc00":1}', {"\ufffd": 1}),
    ('{"a":"\\ud83d\\ude00"}', None),  # a pair is fine: nothing to write
    ('{"n":' + "1" * 100 + "}", {"n": None}),
    ("[" * 200 + "]" * 200, "nested"),
])
def test_repair_turns_stored_values_into_ones_that_read_back(stored, repaired):
    result = repair_text(stored)
    if repaired is None:
        assert result is None
        return
    assert result is not None
    value = loads(result)  # reads back under the strict rules
    if repaired != "nested":
        assert value == repaired


def test_repair_leaves_good_and_unreadable_text_alone():
    assert repair_text('{"a":1}') is None
    assert repair_text(b'{"a":1}') is None
    assert repair_text("not json at all") is None


@pytest.mark.parametrize("cursor", [
    # base64 of "<created>:<id>" with a created_at past SQLite's 64-bit integers
    "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OmpvYl8x",
    # "+1:job_1", "1_0:job_1", "-1:job_1", a non-ASCII digit
    "KzE6am9iXzE", "MV8wOmpvYl8x", "LTE6am9iXzE", "2aM6am9iXzE",
    "not base64 ☃", "",
])
def test_a_cursor_this_service_did_not_issue_is_a_400(cursor):
    with pytest.raises(MalformedRequest) as caught:
        decode_cursor(cursor)
    assert caught.value.details == [{"field": "cursor", "rule": "format"}]


def test_an_error_quoting_an_unwritable_value_still_has_the_one_shape():
    from handlers.errors import error_response

    response = error_response(422, "validation_failed", "no field '\ud800'",
                              [{"field": "a\udc00", "rule": "x", "score": math.nan}])
    body = loads(response.body)
    assert body == {"error": {"code": "validation_failed", "message": "no field '\ufffd'",
                              "details": [{"field": "a\ufffd", "rule": "x", "score": None}]}}


@pytest.mark.parametrize("body", [b'{"id": "t", "progress": NaN}', b'{"id": "\\ud800"}',
                                  b'{"id": ' + b"9" * 5000 + b"}", b"[" * 100_000])
def test_a_provider_answer_that_breaks_the_rules_is_not_an_object_we_read(body):
    from service.errors import CallbackRejected
    from service.providers.base import RawResponse, callback_object

    assert RawResponse(200, {}, body).json_object() is None
    with pytest.raises(CallbackRejected) as caught:
        callback_object(body)
    assert caught.value.status_code == 400
    assert caught.value.code == "malformed_callback"
    assert caught.value.details and caught.value.details[0]["rule"]


def test_an_event_around_the_deepest_metadata_a_client_may_send_reads_back_unrepaired():
    from service.strict_json import DOCUMENT_DEPTH

    metadata = loads('{"m": ' + "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2) + "}")  # a body at 64
    event = dumps({"id": "evt_1", "data": {"metadata": metadata}})
    assert loads(event, max_depth=DOCUMENT_DEPTH)["data"]["metadata"] == metadata
    assert repair_text(event, max_depth=DOCUMENT_DEPTH) is None
    assert repair_text(event) is not None  # at the client's limit the envelope would be cut
