"""The checks every chat or text completion request passes before it is routed, whether it came over
REST or gRPC (both reach them through :func:`coachforge_inference.service.complete` and
:func:`~coachforge_inference.service.stream`). Sampling fields are left to the engine, which
answers a bad one with a 400 naming it."""

from __future__ import annotations

import json
from typing import Any

from coachforge_shared.errors import InvalidArgument

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


DEFAULT_MAX_N = 16
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
"""The engine's seed is a 64-bit signed integer."""


def validate(path: str, body: dict[str, Any], max_n: int = DEFAULT_MAX_N) -> str:
    """The requested model id, once ``body`` (the request for the engine's ``path``) has: a
    non-empty ``messages`` list (chat) or a ``prompt`` (text), a ``model``, an ``n`` from 1 to
    ``max_n`` when given, a positive integer ``max_tokens``/``max_completion_tokens`` when given
    (the engine refuses one beyond the model's context, naming its length), and ``stream_options``
    that are an object when given."""
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
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_n):
        raise InvalidArgument(f"n must be an integer from 1 to {max_n}, got {_short(n)}", param="n")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidArgument(f"{name} must be a positive integer, got {_short(value)}", param=name)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not SEED_MIN <= seed <= SEED_MAX):
        raise InvalidArgument(f"seed must be an integer from {SEED_MIN} to {SEED_MAX}, got {_short(seed)}",
                              param="seed")
    for name in ("model", "user"):
        value = body.get(name)
        if isinstance(value, str) and "\x00" in value:
            raise InvalidArgument(f"{name} may not contain NUL characters", param=name)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidArgument("stream_options must be an object", param="stream_options")
    return model_id


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply ``value``'s objects and arrays nest (a scalar: 0), counted without recursion and
    only until ``limit`` is passed (then ``limit + 1``)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def parse_body(raw: bytes, max_depth: int) -> dict[str, Any]:
    """A completion request's JSON object: 400 naming ``body`` for invalid JSON, anything but an
    object, or objects and arrays nested deeper than ``max_depth`` (the nesting is only walked for
    a body with more brackets than that: ordinary requests pay one scan of their bytes)."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise InvalidArgument(f"The request body nests objects or arrays deeper than {max_depth} levels.",
                              param="body", code="nesting_too_deep") from None
    except ValueError as err:
        raise InvalidArgument(f"The request body is not valid JSON: {err}", param="body") from None
    if not isinstance(body, dict):
        raise InvalidArgument("The request body must be a JSON object.", param="body")
    if raw.count(b"[") + raw.count(b"{") > max_depth and nesting_depth(body, max_depth) > max_depth:
        raise InvalidArgument(f"The request body nests objects or arrays deeper than {max_depth} levels.",
                              param="body", code="nesting_too_deep")
    return body


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
        if "\x00" in key or (isinstance(value, str) and "\x00" in value):
            raise InvalidArgument("metadata keys and values may not contain NUL characters", param="metadata")
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
