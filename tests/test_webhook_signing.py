"""Outbound signatures: known answers, and the independent standardwebhooks package agrees."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from service.errors import ConfigError
from service.webhook_signing import new_secret, sign, signature_header, webhook_headers

# The Standard Webhooks reference libraries' own test vector
# (standard-webhooks/standard-webhooks: libraries/python/.../test_webhooks.py).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_known_answer_from_the_spec_test_vector():
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_independent_library_computes_the_same_signature():
    moment = datetime.fromtimestamp(SPEC_TIMESTAMP, tz=UTC)
    assert Webhook(SPEC_SECRET).sign(SPEC_ID, moment, SPEC_BODY.decode()) == SPEC_SIGNATURE


def test_every_live_secret_signs_and_each_one_verifies_alone():
    old, new = new_secret(), new_secret()
    body = b'{"type":"job.succeeded","data":{}}'
    now = int(datetime.now(tz=UTC).timestamp())
    headers = webhook_headers([new, old], "evt_1", now, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {"type": "job.succeeded", "data": {}}


def test_a_changed_body_does_not_verify():
    secret = new_secret()
    now = int(datetime.now(tz=UTC).timestamp())
    headers = webhook_headers([secret], "evt_1", now, b'{"a":1}')
    with pytest.raises(Exception, match=r"(?i)signature"):
        Webhook(secret).verify(b'{"a":2}', headers)


def test_signature_header_is_space_separated_newest_first():
    a, b = new_secret(), new_secret()
    header = signature_header([a, b], "evt_9", 1700000000, b"{}")
    assert header == f"{sign(a, 'evt_9', 1700000000, b'{}')} {sign(b, 'evt_9', 1700000000, b'{}')}"


@pytest.mark.parametrize("bad", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_***", "whsec_c2hvcnQ="])
def test_malformed_secrets_are_a_config_error(bad):
    with pytest.raises(ConfigError):
        sign(bad, "evt_1", 1, b"{}")
