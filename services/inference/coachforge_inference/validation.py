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


METADATA_PAIRS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512


def check_metadata(metadata: Any) -> dict[str, str]:
    """``metadata`` as kept with a stored completion (OpenAI's rules: an object of at most 16 pairs,
    string keys of at most 64 characters, string values of at most 512); None is no metadata.
    Anything else is refused naming ``metadata``."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidArgument("metadata must be an object of string keys and string values", param="metadata")
    if len(metadata) > METADATA_PAIRS:
        raise InvalidArgument(f"metadata has {len(metadata)} keys; at most {METADATA_PAIRS} are allowed",
                              param="metadata")
    for key, value in metadata.items():
        if not key or len(key) > METADATA_KEY_CHARS:
            raise InvalidArgument(f"metadata keys are 1 to {METADATA_KEY_CHARS} characters; got {key[:80]!r}",
                                  param="metadata")
        if not isinstance(value, str):
            raise InvalidArgument(f"metadata[{key!r}] must be a string, got {type(value).__name__}",
                                  param="metadata")
        if len(value) > METADATA_VALUE_CHARS:
            raise InvalidArgument(f"metadata[{key!r}] is {len(value)} characters; at most "
                                  f"{METADATA_VALUE_CHARS} are allowed", param="metadata")
    return dict(metadata)


def take_store(path: str, body: dict[str, Any]) -> tuple[bool | None, dict[str, str], dict[str, Any]]:
    """For a request with ``store`` or ``metadata`` (the caller checks that first, so that other
    requests pay nothing): whether it asks to be stored (None: it does not say; ``null`` says
    nothing either), its checked metadata, and the body without those two fields (they are not
    the engine's business). ``store`` must be a boolean, and only chat completions are stored."""
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise InvalidArgument(f"store must be a boolean, got {store!r}", param="store")
    if store and path != CHAT:
        raise InvalidArgument(f"store is supported by {CHAT} only", param="store")
    metadata = check_metadata(body.get("metadata"))
    rest = {k: v for k, v in body.items() if k != "store" and k != "metadata"}
    return store, metadata, rest
