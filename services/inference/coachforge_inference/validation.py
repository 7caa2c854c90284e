"""The checks every chat or text completion request passes before it is routed, whether it came over
REST or gRPC (both reach them through :func:`coachforge_inference.service.complete` and
:func:`~coachforge_inference.service.stream`). Sampling fields are left to the engine, which
answers a bad one with a 400 naming it."""

from __future__ import annotations

from typing import Any

from coachforge_shared.errors import InvalidArgument

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def validate(path: str, body: dict[str, Any]) -> str:
    """The requested model id, once ``body`` (the request for the engine's ``path``) has: a
    non-empty ``messages`` list (chat) or a ``prompt`` (text), a ``model``, an ``n`` that is a
    positive integer when given, and ``stream_options`` that are an object when given."""
    if path == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidArgument("messages must be a non-empty list", param="messages")
    elif "prompt" not in body:
        raise InvalidArgument("you must provide a prompt parameter", param="prompt")
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidArgument("you must provide a model parameter", param="model")
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise InvalidArgument(f"n must be an integer of at least 1, got {n!r}", param="n")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidArgument("stream_options must be an object", param="stream_options")
    return model_id
