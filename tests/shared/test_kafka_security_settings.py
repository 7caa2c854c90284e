"""Kafka TLS and SASL settings: what every kafka-python client is made with, and settings that
cannot work refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from coachforge_shared import events
from coachforge_shared.settings import PlatformSettings, platform_settings


def test_plaintext_by_default(tmp_path: Path) -> None:
    assert PlatformSettings(data_dir=tmp_path).kafka_options() == {"security_protocol": "PLAINTEXT"}


def test_sasl_over_tls_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    for name, value in {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "SCRAM-SHA-512",
                        "SASL_USERNAME": "coachforge", "SASL_PASSWORD": "s3cret-password",
                        "SSL_CAFILE": str(ca)}.items():
        monkeypatch.setenv(f"COACHFORGE_KAFKA_{name}", value)
    settings = PlatformSettings(data_dir=tmp_path)
    assert "s3cret-password" not in repr(settings)
    expected = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "coachforge", "sasl_plain_password": "s3cret-password", "ssl_cafile": str(ca)}
    assert settings.kafka_options() == expected
    platform_settings.cache_clear()
    try:
        assert events.kafka_options() == expected  # what every producer, consumer and admin client gets
    finally:
        platform_settings.cache_clear()


@pytest.mark.parametrize("given", [{"kafka_security_protocol": "SASL_PLAINTEXT"},
                                   {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN",
                                    "kafka_sasl_username": "u"},
                                   {"kafka_security_protocol": "TLS"},
                                   {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI",
                                    "kafka_sasl_username": "u", "kafka_sasl_password": "p"}])
def test_incomplete_or_unknown_settings_are_refused(tmp_path: Path, given: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        PlatformSettings(data_dir=tmp_path, **given)  # type: ignore[arg-type]
