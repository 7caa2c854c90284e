"""The webhooks service's signatures follow Standard Webhooks: the reference library
(``standardwebhooks``) verifies them, a rotation signs with both secrets (each verifies on its own),
and any change to the body, id or timestamp fails verification."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from coachforge_webhooks import signing

BODY = json.dumps({"id": "evt_0123", "object": "event", "created_at": 1765000000,
                   "type": "fine_tuning.job.succeeded", "data": {"id": "ftjob-abc"}}, separators=(",", ":"))


def test_a_new_secret_is_whsec_and_32_random_bytes() -> None:
    first, second = signing.new_secret(), signing.new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert signing.secret_bytes(first) == base64.b64decode(first.removeprefix("whsec_"))


def test_the_reference_library_verifies_a_signed_request() -> None:
    secret = signing.new_secret()
    headers = signing.headers([secret], "msg_1", int(time.time()), BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    assert Webhook(secret).verify(BODY.encode(), headers) == json.loads(BODY)  # bytes as received


def test_the_signature_is_hmac_sha256_of_id_timestamp_and_body() -> None:
    """The same as the reference library's own signing, bit for bit."""
    secret, ts = signing.new_secret(), int(time.time())
    assert signing.sign(secret, "msg_2", ts, BODY) == Webhook(secret).sign("msg_2", datetime.fromtimestamp(ts, UTC),
                                                                           BODY)


def test_rotation_signs_with_both_secrets_and_each_verifies() -> None:
    new, previous = signing.new_secret(), signing.new_secret()
    headers = signing.headers([new, previous], "msg_3", int(time.time()), BODY)
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert Webhook(new).verify(BODY, headers) == json.loads(BODY)
    assert Webhook(previous).verify(BODY, headers) == json.loads(BODY)
    # Each signature on its own belongs to exactly one of the secrets.
    for sig, secret, other in ((signatures[0], new, previous), (signatures[1], previous, new)):
        alone = {**headers, "webhook-signature": sig}
        Webhook(secret).verify(BODY, alone)
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(BODY, alone)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(BODY, headers)  # a third secret matches neither


def test_a_tampered_body_id_or_timestamp_fails() -> None:
    secret, ts = signing.new_secret(), int(time.time())
    headers = signing.headers([secret], "msg_4", ts, BODY)
    webhook = Webhook(secret)
    with pytest.raises(WebhookVerificationError):
        webhook.verify(BODY.replace("ftjob-abc", "ftjob-abd"), headers)
    with pytest.raises(WebhookVerificationError):
        webhook.verify(BODY + " ", headers)
    with pytest.raises(WebhookVerificationError):
        webhook.verify(BODY, {**headers, "webhook-id": "msg_5"})
    with pytest.raises(WebhookVerificationError):
        webhook.verify(BODY, {**headers, "webhook-timestamp": str(ts + 1)})


def test_an_old_timestamp_is_refused_by_receivers() -> None:
    """Every attempt is signed with its own timestamp: a replay of an old request fails."""
    secret = signing.new_secret()
    headers = signing.headers([secret], "msg_6", int(time.time()) - 3600, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


def test_a_secret_that_is_not_base64_is_refused() -> None:
    with pytest.raises(ValueError):
        signing.secret_bytes("whsec_not base64!")
    with pytest.raises(ValueError):
        signing.secret_bytes("whsec_")
