"""Personal data detection and replacement (coachforge_shared.pii), shared by the dataset pipeline's
PII stage and the stored completions consumer."""

from __future__ import annotations

from collections import Counter

from coachforge_dataset.pipeline import clean
from coachforge_shared import pii


def test_scrub_text_replaces_emails_phones_and_urls_with_credentials() -> None:
    text = ("Mail jane.doe+x@example.co.uk or call +44 20 7946 0958 / (555) 123-4567. "
            "See https://ex.com/a?token=abc&x=1 and https://ex.com/doc?page=2. "
            "Ride on 2025-03-10, 120 150 watts, id 12345678.")
    out, counts = pii.scrub_text(text)
    assert out == ("Mail [EMAIL] or call [PHONE] / [PHONE]. See [URL] and https://ex.com/doc?page=2. "
                   "Ride on 2025-03-10, 120 150 watts, id 12345678.")
    assert counts == {"email": 1, "phone": 2, "url": 1}
    assert pii.scrub_text("Nothing personal: 5x400m at 4:05/km.") == ("Nothing personal: 5x400m at 4:05/km.",
                                                                      Counter())
    for url in ("https://s3.x/y?X-Amz-Signature=zz", "http://a.b/c?sig=1", "http://a.b/?access_token=q",
                "http://a.b/?api_key=k", "http://a.b/?my_secret=k"):
        assert pii.url_has_secret(url) and pii.scrub_text(url)[0] == "[URL]"
    assert not pii.url_has_secret("http://a.b/?page=2&sort=asc")


def test_scrub_value_walks_json_and_counts() -> None:
    counts: Counter[str] = Counter()
    image = "data:image/png;base64,AAAA/+441234567890AAAA"
    value = {"role": "user", "n": 3, "ok": True, "none": None,
             "content": [{"type": "text", "text": "I am bob@example.com"},
                         {"type": "image_url", "image_url": {"url": "https://img.x/a.png?sig=abc"}},
                         {"type": "image_url", "image_url": {"url": image}}],
             "phones": ["555-123-4567", "plain"]}
    out = pii.scrub_value(value, counts)
    assert out == {"role": "user", "n": 3, "ok": True, "none": None,
                   "content": [{"type": "text", "text": "I am [EMAIL]"},
                               {"type": "image_url", "image_url": {"url": "[URL]"}},
                               {"type": "image_url", "image_url": {"url": image}}],
                   "phones": ["[PHONE]", "plain"]}
    assert counts == {"email": 1, "url": 1, "phone": 1}
    assert value["phones"] == ["555-123-4567", "plain"]  # the input is left as it was
    assert pii.scrub_value("x@y.io") == "[EMAIL]"  # counting is optional


def test_the_dataset_pipeline_uses_the_shared_scrubber() -> None:
    assert clean.scrub_text is pii.scrub_text
    assert clean.PII_KINDS == pii.PII_KINDS == ("email", "phone", "url")


def test_an_address_after_a_run_of_percent_signs_is_still_found_in_one_pass() -> None:
    """A match may not start inside a run of address characters, '%' included (else every position of
    a long run of them starts a scan to its end: quadratic time on a hostile message)."""
    text, counts = pii.scrub_text("%" * 20_000 + "anna@example.com and bob@example.org")
    assert text.endswith("[EMAIL] and [EMAIL]") and counts["email"] == 2
