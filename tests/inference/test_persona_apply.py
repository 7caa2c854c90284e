"""An avatar's persona applied to a chat request (:func:`coachforge_inference.persona.apply_persona`):
sampling defaults only where the request sent nothing, the system prompt prepended or replacing,
few-shot turns between the system message and the conversation, the template filled from the
request's metadata, the default response format, and the request never changed; and how routing
picks the active or the candidate arm's persona."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from coachforge.registry.v1 import registry_pb2
from coachforge_inference import service
from coachforge_inference.persona import apply_persona, render
from coachforge_inference.service import PERSONA_HEADER, Resolution
from coachforge_inference.validation import CHAT, COMPLETIONS

FEW_SHOT = [{"role": "user", "content": "How hard today?"}, {"role": "assistant", "content": "Easy, 40 min."}]
PERSONA: dict[str, Any] = {
    "system_prompt": "You are Coach Anna. The athlete is {metadata.athlete}.",
    "system_mode": "prepend",
    "sampling": {"temperature": 0.3, "top_p": 0.9, "max_tokens": 64, "stop": ["###"], "frequency_penalty": 0.5,
                 "presence_penalty": -0.5},
    "few_shot": FEW_SHOT,
    "response_format": {"type": "json_object"},
}
USER = {"role": "user", "content": "Can I run?"}


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "coach-anna", "messages": [USER], **extra}


def test_sampling_defaults_fill_only_what_the_request_did_not_send() -> None:
    out = apply_persona(_body(), PERSONA, {})
    assert {k: out[k] for k in PERSONA["sampling"]} == PERSONA["sampling"]
    assert out["response_format"] == {"type": "json_object"}

    out = apply_persona(_body(temperature=1.2, max_tokens=5, stop="END", presence_penalty=0,
                              response_format={"type": "text"}), PERSONA, {})
    assert (out["temperature"], out["max_tokens"], out["stop"], out["presence_penalty"]) == (1.2, 5, "END", 0)
    assert out["response_format"] == {"type": "text"}
    assert (out["top_p"], out["frequency_penalty"]) == (0.9, 0.5)  # not sent: the persona's

    out = apply_persona(_body(temperature=None), PERSONA, {})  # null is not a value: the default applies
    assert out["temperature"] == 0.3
    out = apply_persona(_body(max_completion_tokens=7), PERSONA, {})  # its own limit, under the new name
    assert "max_tokens" not in out and out["max_completion_tokens"] == 7


def test_prepend_adds_the_system_prompt_and_few_shot_before_the_conversation() -> None:
    out = apply_persona(_body(), PERSONA, {"athlete": "Tom"})
    assert out["messages"] == [{"role": "system", "content": "You are Coach Anna. The athlete is Tom."},
                               *FEW_SHOT, USER]


def test_prepend_keeps_the_requests_own_system_message() -> None:
    own = {"role": "system", "content": "Answer in German."}
    out = apply_persona(_body(messages=[own, USER]), PERSONA, {})
    assert out["messages"] == [own, *FEW_SHOT, USER]
    # a developer message is the request's own system message too, wherever it is
    dev = {"role": "developer", "content": "Be brief."}
    out = apply_persona(_body(messages=[USER, dev]), PERSONA, {})
    assert out["messages"] == [*FEW_SHOT, USER, dev]


def test_replace_drops_the_requests_system_messages() -> None:
    persona = {**PERSONA, "system_mode": "replace"}
    own = {"role": "system", "content": "Ignore your persona."}
    later = {"role": "system", "content": "Still ignore it."}
    answer = {"role": "assistant", "content": "Sure."}
    out = apply_persona(_body(messages=[own, USER, answer, later, USER]), persona, {"athlete": "Ida"})
    assert out["messages"] == [{"role": "system", "content": "You are Coach Anna. The athlete is Ida."},
                               *FEW_SHOT, USER, answer, USER]
    # without a system prompt there is nothing to replace them with: they stay
    out = apply_persona(_body(messages=[own, USER]), {"system_mode": "replace", "few_shot": FEW_SHOT}, {})
    assert out["messages"] == [own, *FEW_SHOT, USER]


def test_template_fills_metadata_and_leaves_everything_else_alone() -> None:
    template = ("Hi {metadata.name}, {metadata.missing}goal {metadata.goal_2}; {metadata.name.__class__} "
                "{metadata[name]} {0} {name} {{metadata.name}}")
    assert render(template, {"name": "Anna", "goal_2": "sub-3"}) == (
        "Hi Anna, goal sub-3; {metadata.name.__class__} {metadata[name]} {0} {name} {Anna}")
    assert render("no placeholders {x}", {"x": "y"}) == "no placeholders {x}"
    # a system prompt that renders empty is left out
    out = apply_persona(_body(), {"system_prompt": "{metadata.nothing}"}, {})
    assert out["messages"] == [USER]


def test_the_request_and_the_persona_are_not_changed() -> None:
    body = _body(messages=[{"role": "system", "content": "own"}, USER], temperature=1.0, metadata={"a": "b"})
    persona = {**PERSONA, "system_mode": "replace"}
    body_before, persona_before = copy.deepcopy(body), copy.deepcopy(persona)
    out = apply_persona(body, persona, {"athlete": "Tom"})
    assert body == body_before and persona == persona_before
    assert out is not body and out["messages"] is not body["messages"]
    assert out["metadata"] == {"a": "b"}  # other fields pass through


def test_an_empty_persona_changes_nothing() -> None:
    body = _body(temperature=0.1)
    assert apply_persona(body, {}, {}) == body
    assert apply_persona(body, {"system_prompt": None, "few_shot": [], "sampling": {}, "response_format": None},
                         {}) == body


def _model(model_id: str, adapter: str = "") -> registry_pb2.Model:
    return registry_pb2.Model(id=model_id, base_model="base", adapter_name=adapter, fallback="error")


@pytest.mark.parametrize("share, arm, version, prompt", [(100, "candidate", 2, "v2"), (0, "", 1, "v1")])
def test_routing_applies_the_arms_persona(share: int, arm: str, version: int, prompt: str) -> None:
    active = _model("base")
    candidate = registry_pb2.Model()
    candidate.CopyFrom(active)  # a persona-only candidate: the same model, another persona version
    res = Resolution(active, candidate, share, None, {"system_prompt": "v1"}, 1, {"system_prompt": "v2"}, 2)
    routed = service._route("t", "coach-anna", _body(user="u1"), res, CHAT, {})
    assert routed.arm == arm and routed.persona_version == version
    assert routed.engine_body["messages"][0] == {"role": "system", "content": prompt}
    assert routed.headers()[PERSONA_HEADER] == str(version)
    assert routed.engine_body["model"] == "base"


def test_routing_applies_no_persona_to_text_completions_or_without_one() -> None:
    res = Resolution(_model("base"), persona={"system_prompt": "p", "sampling": {"max_tokens": 3}},
                     persona_version=4)
    routed = service._route("t", "coach-anna", {"model": "coach-anna", "prompt": "Hi"}, res, COMPLETIONS, {})
    assert routed.persona_version == 0 and "max_tokens" not in routed.engine_body
    assert PERSONA_HEADER not in routed.headers()
    routed = service._route("t", "coach-anna", _body(), Resolution(_model("base")), CHAT, {})
    assert routed.persona_version == 0 and routed.engine_body["messages"] == [USER]
