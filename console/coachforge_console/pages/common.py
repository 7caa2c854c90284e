"""Helpers the pages share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import quote

from coachforge_console.client import ApiError

T = TypeVar("T")


class Part:
    """One part of a page: its value, or the API's error message (the rest of the page still shows)."""

    def __init__(self, value: Any = None, error: str | None = None) -> None:
        self.value, self.error = value, error

    @property
    def ok(self) -> bool:
        return self.error is None


async def part(call: Awaitable[Any]) -> Part:
    try:
        return Part(await call)
    except ApiError as err:
        if err.status == 401:
            raise
        return Part(error=err.message)


async def optional_part(call: Awaitable[Any]) -> Part:
    """A part whose API may be missing, or have nothing, here (a 404 gives ``Part(None)``)."""
    try:
        return Part(await call)
    except ApiError as err:
        if err.status == 401:
            raise
        if err.status == 404:
            return Part(None)
        return Part(error=err.message)


async def parts(*calls: Awaitable[Any]) -> list[Part]:
    return list(await asyncio.gather(*(part(c) for c in calls)))


def seg(value: str) -> str:
    """A path segment for the API (everything escaped)."""
    return quote(value, safe="")


def model_path(model_id: str) -> str:
    """A model id in ``/v1/models/{id}`` (its ``:`` kept, as the registry reads it as a path)."""
    return quote(model_id, safe=":")
