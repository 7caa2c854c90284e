"""The plug-in registry: lookup by name, typed errors, and what it refuses to load (fake entry points)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from coachforge_shared import plugins
from coachforge_shared.errors import NotFound
from coachforge_shared.plugins import FORMAT_GROUP, GENERATOR_GROUP, PluginError


class EchoFormat:
    name = "echo"
    detect_order = 500
    answer_label = "echo"

    def recognises(self, obj: Mapping[str, Any]) -> bool:
        return "echo" in obj

    def convert(self, obj: Mapping[str, Any]) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
        return [{"role": "user", "content": obj["echo"]}, {"role": "assistant", "content": obj["echo"]}], []

    def check_answer(self, answer: str, *, own_format: bool) -> bool | None:
        return None


class CountingGenerator:
    name = "count"
    description = "n trivial conversations"

    def generate(self, count: int, seed: int) -> list[dict[str, Any]]:
        return [{"messages": [{"role": "user", "content": str(seed + i)}, {"role": "assistant", "content": "ok"}]}
                for i in range(count)]


@dataclass(frozen=True)
class FakeEntryPoint:
    name: str
    value: str
    target: Any

    def load(self) -> Any:
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[FakeEntryPoint]]]:
    """Entry points by group, as the registry will see them; the real ones come back afterwards."""
    groups: dict[str, list[FakeEntryPoint]] = {FORMAT_GROUP: [], GENERATOR_GROUP: []}
    monkeypatch.setattr(plugins, "entry_points", lambda group: groups.get(group, []))
    plugins.clear_cache()
    yield groups
    plugins.clear_cache()


def test_plugins_are_found_by_name_and_classes_are_instantiated(installed: dict[str, list[FakeEntryPoint]]) -> None:
    installed[FORMAT_GROUP].append(FakeEntryPoint("echo", "tests:EchoFormat", EchoFormat))
    installed[GENERATOR_GROUP].append(FakeEntryPoint("count", "tests:GEN", CountingGenerator()))
    fmt = plugins.dataset_format("echo")
    assert isinstance(fmt, EchoFormat) and isinstance(fmt, plugins.ConversationFormat)
    assert plugins.dataset_format("echo") is fmt  # loaded once, cached
    assert list(plugins.dataset_formats()) == ["echo"]
    generator = plugins.synthetic_generator("count")
    assert list(generator.generate(2, 5))[1]["messages"][0]["content"] == "6"


def test_unknown_names_are_typed_not_found_errors(installed: dict[str, list[FakeEntryPoint]]) -> None:
    installed[FORMAT_GROUP].append(FakeEntryPoint("echo", "tests:EchoFormat", EchoFormat))
    with pytest.raises(NotFound) as err:
        plugins.dataset_format("yaml")
    assert err.value.param == "format" and err.value.code == "format_not_found"
    assert "'yaml'" in err.value.message and "installed: echo" in err.value.message
    with pytest.raises(NotFound) as err:
        plugins.synthetic_generator("coach")
    assert err.value.param == "generator" and err.value.code == "generator_not_found"
    assert err.value.http_status == 404
    assert err.value.to_body()["error"] == {"message": err.value.message, "type": "invalid_request_error",
                                            "param": "generator", "code": "generator_not_found"}


def test_the_cache_is_cleared_on_request(installed: dict[str, list[FakeEntryPoint]]) -> None:
    assert dict(plugins.synthetic_generators()) == {}
    installed[GENERATOR_GROUP].append(FakeEntryPoint("count", "tests:GEN", CountingGenerator()))
    assert dict(plugins.synthetic_generators()) == {}  # still the cached answer
    plugins.clear_cache()
    assert list(plugins.synthetic_generators()) == ["count"]


def test_the_same_plugin_seen_twice_is_one(installed: dict[str, list[FakeEntryPoint]]) -> None:
    installed[FORMAT_GROUP] += [FakeEntryPoint("echo", "tests:EchoFormat", EchoFormat)] * 2
    assert list(plugins.dataset_formats()) == ["echo"]


@pytest.mark.parametrize(("entry", "message"), [
    (FakeEntryPoint("echo", "tests:broken", ImportError("no module named tests")), "failed to load"),
    (FakeEntryPoint("echo", "tests:GEN", CountingGenerator()), "is not a ConversationFormat"),
    (FakeEntryPoint("other", "tests:EchoFormat", EchoFormat), "calls itself 'echo'"),
])
def test_unusable_plugins_are_plugin_errors(installed: dict[str, list[FakeEntryPoint]], entry: FakeEntryPoint,
                                            message: str) -> None:
    installed[FORMAT_GROUP].append(entry)
    with pytest.raises(PluginError, match=message):
        plugins.dataset_formats()


def test_two_plugins_with_one_name_are_refused(installed: dict[str, list[FakeEntryPoint]]) -> None:
    installed[GENERATOR_GROUP] += [FakeEntryPoint("count", "a:GEN", CountingGenerator()),
                                   FakeEntryPoint("count", "b:GEN", CountingGenerator())]
    with pytest.raises(PluginError, match="two plug-ins are named 'count'"):
        plugins.synthetic_generator("count")
