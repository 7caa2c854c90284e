"""An avatar's persona applied to a chat completion request: one small pure function on the
request's path (:func:`apply_persona`), run after the request was checked and routed.

A persona (as the registry keeps it, ``Avatar.persona_json``) has:

* ``system_prompt``: a template; ``{metadata.<key>}`` becomes the request's metadata value for
  that key (empty when it has none). Nothing else in it is interpreted: no attribute or index
  access, other braces are kept as written.
* ``system_mode``: ``prepend`` (the default) puts the system prompt first unless the request has
  its own system message; ``replace`` drops the request's system messages for it.
* ``few_shot``: example turns, put after the system message(s) at the start and before the
  conversation.
* ``sampling``: defaults for ``temperature``, ``top_p``, ``max_tokens``, ``stop``,
  ``frequency_penalty``, ``presence_penalty``, used where the request did not send the field
  (a request with ``max_completion_tokens`` gets no ``max_tokens``).
* ``response_format``: used when the request has none.
* ``knowledge``: not applied here: the service searches the knowledge base for the request and
  puts the snippets into the system message (:mod:`coachforge_inference.knowledge`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SAMPLING = ("temperature", "top_p", "max_tokens", "stop", "frequency_penalty", "presence_penalty")
SYSTEM_ROLES = frozenset({"system", "developer"})
PLACEHOLDER = re.compile(r"\{metadata\.([A-Za-z0-9_]+)\}")
_MARK = "{metadata."


def render(template: str, metadata: Mapping[str, str]) -> str:
    """``template`` with each ``{metadata.<key>}`` replaced by ``metadata[key]`` ("" when missing)."""
    if _MARK not in template:
        return template
    return PLACEHOLDER.sub(lambda m: str(metadata.get(m.group(1)) or ""), template)


def _is_system(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") in SYSTEM_ROLES


def apply_persona(body: dict[str, Any], persona: Mapping[str, Any], metadata: Mapping[str, str]) -> dict[str, Any]:
    """A new request body: ``body`` (an OpenAI chat completion request, not changed) with
    ``persona`` applied (see the module), ``metadata`` filling the system prompt's placeholders.
    The result shares the values it did not change with ``body`` and the persona's values with
    ``persona``: neither may be changed through it."""
    out = dict(body)
    sampling = persona.get("sampling")
    if sampling:
        for key in SAMPLING:
            if key in sampling and out.get(key) is None:
                if key == "max_tokens" and out.get("max_completion_tokens") is not None:
                    continue
                out[key] = sampling[key]
    response_format = persona.get("response_format")
    if response_format and out.get("response_format") is None:
        out["response_format"] = response_format

    prompt = persona.get("system_prompt")
    few_shot = persona.get("few_shot") or ()
    messages = body.get("messages")
    if not isinstance(messages, list) or not (prompt or few_shot):
        return out
    if prompt and persona.get("system_mode") == "replace":
        conversation = [m for m in messages if not _is_system(m)]
        head: list[Any] = []
        system = render(prompt, metadata)
        if system:
            head.append({"role": "system", "content": system})
    else:
        lead = 0  # the request's own system messages at the start stay first
        while lead < len(messages) and _is_system(messages[lead]):
            lead += 1
        has_own = lead > 0 or any(_is_system(m) for m in messages)
        head = list(messages[:lead])
        conversation = messages[lead:]
        if prompt and not has_own:
            system = render(prompt, metadata)
            if system:
                head.append({"role": "system", "content": system})
    out["messages"] = [*head, *few_shot, *conversation]
    return out
