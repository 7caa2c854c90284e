"""Clients of the running stack shared by the dataset tests that go through the public API."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI


@pytest.fixture(scope="module")
def client(stack) -> OpenAI:  # type: ignore[no-untyped-def]
    """The official SDK against the stack's public API, without retries."""
    return OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(stack) -> httpx.Client:  # type: ignore[no-untyped-def]
    """Plain HTTP to the stack (routes the SDK has no method for), authorised with the stack's key."""
    return httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=120,
                        headers={"Authorization": f"Bearer {stack.api_key}"})
