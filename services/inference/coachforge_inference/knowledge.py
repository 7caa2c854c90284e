"""Knowledge snippets for an avatar persona with ``knowledge``: the conversation's last user turns
searched in the tenant's knowledge base (the dataset service's ``KnowledgeService.Search`` over
gRPC, bounded by a short timeout), and the snippets found put into the system message.

A persona's ``knowledge`` (as the registry keeps it) is
``{"knowledge_base": "kb-…", "top_k": 4, "max_tokens": 400, "query_turns": 1}``.

The pure parts (:func:`query_from`, :func:`knowledge_block`, :func:`with_knowledge`) decide what
is searched and what the engine is sent; :func:`lookup` asks the dataset service and never
raises: a knowledge base that is gone or a dataset service that does not answer in time makes an
:class:`Lookup` whose outcome says so, and the request is answered without knowledge."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import grpc

from coachforge.dataset.v1 import knowledge_pb2, knowledge_pb2_grpc
from coachforge_shared.grpc_server import InternalChannel
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.inference.knowledge")

HEADER = "x-coachforge-knowledge"
UNAVAILABLE = "unavailable"
"""The header's value when the knowledge could not be searched (the request was answered without it)."""
INTRO = "Knowledge (cite the source ids you use):"
"""The first line of the knowledge block."""
MAX_QUERY_CHARS = 8000
"""The longest query the knowledge service takes; a longer one keeps its end (the latest words)."""
SYSTEM_ROLES = frozenset({"system", "developer"})

USED, EMPTY, NO_QUERY, NOT_FOUND, ERROR = "used", "empty", "no_query", "not_found", "error"
OUTCOMES = (USED, EMPTY, NO_QUERY, NOT_FOUND, UNAVAILABLE, ERROR)
"""Every outcome of a lookup (the ``outcome`` label of ``coachforge_knowledge_lookups_total``)."""


@dataclass(frozen=True)
class Snippet:
    """One chunk a search returned, as the prompt cites it."""

    chunk_id: str
    source: str
    """The document's title or file name."""
    text: str
    """The chunk's text: its section's heading path on the first line, if any, then the passage."""


@dataclass(frozen=True)
class Lookup:
    """What a knowledge search gave: its outcome (one of :data:`OUTCOMES`) and the snippets, best first."""

    outcome: str
    snippets: tuple[Snippet, ...] = ()

    @property
    def header(self) -> str:
        """The ``x-coachforge-knowledge`` value: the chunk ids used, comma-separated, in rank order;
        ``unavailable`` when the search could not be made; "" (no header) when nothing was found."""
        if self.snippets:
            return ",".join(s.chunk_id for s in self.snippets)
        return UNAVAILABLE if self.outcome in (NOT_FOUND, UNAVAILABLE, ERROR) else ""


def _text(content: Any) -> str:
    """A message's text: the string, or its text parts joined by new lines (other parts left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content
                         if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


def query_from(messages: Any, turns: int) -> str:
    """The search query of a conversation: its last ``turns`` user messages, oldest first, one per
    line (a message of text parts: those parts), stripped; only its last :data:`MAX_QUERY_CHARS`
    characters when longer; "" when there is no user text."""
    if not isinstance(messages, list) or turns < 1:
        return ""
    found: list[str] = []
    for message in reversed(messages):
        if len(found) == turns:
            break
        if isinstance(message, dict) and message.get("role") == "user":
            text = _text(message.get("content")).strip()
            if text:
                found.append(text)
    query = "\n".join(reversed(found))
    return query[-MAX_QUERY_CHARS:].strip()


def knowledge_block(snippets: Sequence[Snippet]) -> str:
    """The text put into the system message: :data:`INTRO`, then one block per snippet in rank
    order, blocks apart by a blank line, each ``[<chunk id>] <source>`` on its first line and the
    chunk's text below; "" for no snippets."""
    if not snippets:
        return ""
    blocks = [f"[{s.chunk_id}] {' '.join(s.source.split())}\n{s.text.strip()}" for s in snippets]
    return INTRO + "\n" + "\n\n".join(blocks)


def with_knowledge(messages: list[Any], block: str) -> list[Any]:
    """``messages`` (an engine's chat messages, not changed) with ``block`` at the end of the last
    system message at their start (the persona's system prompt, or the request's own), after a
    blank line; without a system message at the start, ``block`` is a system message of its own,
    put first. A system message made of text parts gets ``block`` as one more text part."""
    if not block:
        return list(messages)
    lead = 0
    while lead < len(messages) and isinstance(messages[lead], dict) and messages[lead].get("role") in SYSTEM_ROLES:
        lead += 1
    if lead == 0:
        return [{"role": "system", "content": block}, *messages]
    last = dict(messages[lead - 1])
    content = last.get("content")
    if isinstance(content, list):
        last["content"] = [*content, {"type": "text", "text": block}]
    elif isinstance(content, str) and content:
        last["content"] = f"{content}\n\n{block}"
    else:
        last["content"] = block
    return [*messages[: lead - 1], last, *messages[lead:]]


def _search(channel: InternalChannel, tenant_id: str, setting: Mapping[str, Any], query: str,
            timeout: float) -> knowledge_pb2.SearchResponse:
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel.channel)
    request = knowledge_pb2.SearchRequest(knowledge_base_id=str(setting.get("knowledge_base") or ""), query=query,
                                          top_k=int(setting.get("top_k") or 0),
                                          max_tokens=int(setting.get("max_tokens") or 0))
    response: knowledge_pb2.SearchResponse = stub.Search(request, metadata=channel.metadata(tenant_id),
                                                         timeout=timeout)
    return response


async def lookup(channel: InternalChannel | None, tenant_id: str, setting: Mapping[str, Any], messages: Any,
                 timeout: float) -> Lookup:
    """Search the persona's knowledge base (``setting``: its ``knowledge``) for the conversation
    ``messages`` on behalf of ``tenant_id``, waiting at most ``timeout`` seconds; never raises."""
    knowledge_base = setting.get("knowledge_base")
    turns = setting.get("query_turns") or 1
    query = query_from(messages, turns if isinstance(turns, int) else 1)
    if not query:
        return Lookup(NO_QUERY)
    if channel is None:
        log.warning("knowledge not searched: no dataset service is configured", knowledge_base=knowledge_base)
        return Lookup(UNAVAILABLE)
    try:
        response = await anyio.to_thread.run_sync(_search, channel, tenant_id, setting, query, timeout)
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        outcome = {grpc.StatusCode.NOT_FOUND: NOT_FOUND, grpc.StatusCode.UNAVAILABLE: UNAVAILABLE,
                   grpc.StatusCode.DEADLINE_EXCEEDED: UNAVAILABLE}.get(code, ERROR)
        log.warning("knowledge not searched; answering without it", knowledge_base=knowledge_base, tenant=tenant_id,
                    outcome=outcome, code=code.name if code is not None else None,
                    error=err.details() if isinstance(err, grpc.Call) else str(err))
        return Lookup(outcome)
    snippets = tuple(Snippet(h.chunk_id, h.source, h.text) for h in response.hits)
    return Lookup(USED if snippets else EMPTY, snippets)
