"""Where webhooks may be sent (coachforge_webhooks.destinations): blocked address kinds, resolution,
the allowed networks, and the setting that lists them."""

from __future__ import annotations

import ipaddress
import secrets

import pytest
from pydantic import ValidationError

from coachforge_webhooks.destinations import BlockedDestination, check_destination, kind_of, parse_networks
from coachforge_webhooks.settings import WebhooksSettings


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("100.64.3.2", "shared (carrier-grade NAT)"), ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"),
    ("::ffff:10.0.0.1", "private"), ("8.8.8.8", None), ("2606:4700:4700::1111", None),
])
def test_address_kinds(address: str, kind: str | None) -> None:
    assert kind_of(ipaddress.ip_address(address)) == kind


def _resolver(*addresses: str):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)
    return resolve


def test_a_public_host_passes_and_a_name_resolving_inside_is_blocked() -> None:
    check_destination("https://hooks.example.org/x", [], resolve=_resolver("93.184.216.34"))
    with pytest.raises(BlockedDestination, match=r"hooks.example.org \(10.9.8.7\) is a private address"):
        check_destination("https://hooks.example.org/x", [], resolve=_resolver("93.184.216.34", "10.9.8.7"))


def test_allowed_networks_let_a_private_receiver_through() -> None:
    allowed = parse_networks(["10.20.0.0/16"])
    check_destination("http://10.20.1.1:8080/hook", allowed)
    with pytest.raises(BlockedDestination):
        check_destination("http://10.21.1.1:8080/hook", allowed)


def test_a_name_that_does_not_resolve_is_accepted_only_when_asked() -> None:
    def fails(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    check_destination("https://later.example.org/", [], resolve=fails, unresolved_ok=True)
    with pytest.raises(BlockedDestination, match="does not resolve"):
        check_destination("https://later.example.org/", [], resolve=fails)


def test_the_setting_takes_a_list_and_refuses_what_is_not_a_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COACHFORGE_WEBHOOKS_ALLOWED_NETWORKS", "10.20.0.0/16, 127.0.0.1")
    assert [str(n) for n in WebhooksSettings().allowed()] == ["10.20.0.0/16", "127.0.0.1/32"]
    monkeypatch.setenv("COACHFORGE_WEBHOOKS_ALLOWED_NETWORKS", "ten.0.0.0/8")
    with pytest.raises(ValidationError, match="is not a network"):
        WebhooksSettings()


def test_a_secret_box_seals_with_the_first_key_and_opens_with_any() -> None:
    from coachforge_webhooks.sealing import SecretBox, SecretUnavailable

    a, b = secrets.token_hex(32), secrets.token_hex(32)
    sealed = SecretBox([a]).seal("whsec_abc")
    assert sealed.startswith("fernet:") and "abc" not in sealed
    assert SecretBox([b, a]).open(sealed) == "whsec_abc"
    assert SecretBox([]).open("whsec_plain") == SecretBox([a]).open("whsec_plain") == "whsec_plain"
    assert SecretBox([]).seal("whsec_abc") == "whsec_abc"
    with pytest.raises(SecretUnavailable, match="none of"):
        SecretBox([b]).open(sealed)
    with pytest.raises(ValidationError, match="key 1 has 9 characters"):
        WebhooksSettings(secret_keys="not-a-key")
