"""gRPC ``InferenceService``: the semantics of the REST ``/v1/chat/completions`` and ``/v1/completions``,
streaming included (each gRPC request is turned into the REST body it stands for, and answered by
the same async path, on the server's event loop)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from pydantic import ValidationError

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_inference import review, service, stored
from coachforge_inference import usage as usage_mod
from coachforge_inference.schemas import FeedbackIn
from coachforge_inference.service import InferenceDeps
from coachforge_inference.validation import CHAT, COMPLETIONS
from coachforge_shared.auth import current_principal
from coachforge_shared.errors import Internal, InvalidArgument, Unavailable
from coachforge_shared.grpc_server import ServiceRegistration

TRAINING_PAGE = 500
"""Stored completions read from the database at a time by ListStoredCompletions."""
DEFAULT_TRAINING_LIMIT = 10_000


def _body(request: inference_pb2.ChatCompletionRequest | inference_pb2.CompletionRequest) -> dict[str, Any]:
    """The REST body a gRPC chat or text completion request stands for (unset fields are left out,
    so the engine's defaults apply as over REST)."""
    body: dict[str, Any] = {"model": request.model}
    for name in ("max_tokens", "n"):
        if getattr(request, name):
            body[name] = getattr(request, name)
    for name in ("temperature", "top_p", "seed", "max_completion_tokens"):
        if name in request.DESCRIPTOR.fields_by_name and request.HasField(name):
            body[name] = getattr(request, name)
    if request.stop:
        body["stop"] = list(request.stop)
    if request.user:
        body["user"] = request.user
    if request.response_format_json:
        try:
            body["response_format"] = json.loads(request.response_format_json)
        except (json.JSONDecodeError, RecursionError) as err:
            raise InvalidArgument(f"response_format_json is not JSON or nests too deeply: {err}",
                                  param="response_format") from None
    if isinstance(request, inference_pb2.ChatCompletionRequest):
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.store:
            body["store"] = True
        if request.metadata:
            body["metadata"] = dict(request.metadata)
    elif request.prompt:  # proto3 cannot tell an empty prompt from none: both are refused
        body["prompt"] = request.prompt
    return body


def _choice(choice: dict[str, Any]) -> inference_pb2.Choice:
    """A chat message, a chat delta or a text completion choice as a :class:`Choice`."""
    part = choice.get("message") or choice.get("delta")
    content = part.get("content") if isinstance(part, dict) else choice.get("text")
    return inference_pb2.Choice(index=int(choice.get("index") or 0), content=content or "",
                                finish_reason=choice.get("finish_reason") or "")


def _usage(usage: dict[str, Any] | None) -> inference_pb2.Usage | None:
    if not usage:
        return None
    return inference_pb2.Usage(prompt_tokens=usage.get("prompt_tokens") or 0,
                               completion_tokens=usage.get("completion_tokens") or 0,
                               total_tokens=usage.get("total_tokens") or 0)


def _chunk(chunk: dict[str, Any]) -> inference_pb2.CompletionChunk:
    return inference_pb2.CompletionChunk(
        id=chunk.get("id", ""), model=chunk["model"], created=int(chunk.get("created") or 0),
        choices=[_choice(c) for c in chunk.get("choices") or ()], usage=_usage(chunk.get("usage")))


def _feedback_body(request: inference_pb2.RecordFeedbackRequest) -> dict[str, Any]:
    """The REST feedback body a RecordFeedbackRequest stands for, validated as REST validates it."""
    data: dict[str, Any] = {"gold": request.gold, "flagged": request.flagged}
    for name in ("rating", "correction", "comment"):
        if request.HasField(name):
            data[name] = getattr(request, name)
    if request.rater:
        data["rater"] = request.rater
    try:
        return FeedbackIn.model_validate(data).model_dump()
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"]) or "request"
        raise InvalidArgument(f"Invalid feedback: {param}: {first['msg']}", param=param) from None


def _feedback(row: dict[str, Any]) -> inference_pb2.CompletionFeedback:
    msg = inference_pb2.CompletionFeedback(
        id=row["id"], completion_id=row["completion_id"], rater=row["rater"], gold=bool(row["gold"]),
        created_at=row["created_at"] or 0, updated_at=row["updated_at"] or 0, flagged=bool(row.get("flagged")))
    for name in ("rating", "correction", "comment"):
        if row[name] is not None:
            setattr(msg, name, row[name])
    return msg


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, deps: InferenceDeps) -> None:
        self.deps = deps

    async def _complete(self, path: str, body: dict[str, Any], purpose: str,
                        context: grpc.aio.ServicerContext) -> dict[str, Any]:
        raw, routed = await service.complete(self.deps, current_principal().tenant_id, path, body, purpose=purpose)
        await context.send_initial_metadata(tuple(routed.headers().items()))
        result: dict[str, Any] = json.loads(raw)
        return result

    async def _stream(self, path: str, body: dict[str, Any], include_usage: bool, purpose: str,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[inference_pb2.CompletionChunk]:
        """The answer's server-sent events as chunks; an error after the first one ends the call with
        that error's status (raised here, mapped by the server's interceptor)."""
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        events, routed = await service.stream(self.deps, current_principal().tenant_id, path, body,
                                              purpose=purpose)
        try:
            await context.send_initial_metadata(tuple(routed.headers().items()))
            async for line in events:
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise routed.error or Internal(str(chunk["error"].get("message")))
                yield _chunk(chunk)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def CreateChatCompletion(self, request: inference_pb2.ChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> inference_pb2.ChatCompletionResponse:
        result = await self._complete(CHAT, _body(request), request.purpose, context)
        choices = [_choice(c) for c in result["choices"]]
        return inference_pb2.ChatCompletionResponse(
            id=result.get("id", ""), model=result["model"], content=choices[0].content,
            finish_reason=choices[0].finish_reason, created=int(result.get("created", 0)),
            usage=_usage(result.get("usage")), choices=choices)

    async def StreamChatCompletion(self, request: inference_pb2.ChatCompletionRequest,
                                   context: grpc.aio.ServicerContext) -> AsyncIterator[inference_pb2.CompletionChunk]:
        async for chunk in self._stream(CHAT, _body(request), request.include_usage, request.purpose, context):
            yield chunk

    async def CreateCompletion(self, request: inference_pb2.CompletionRequest,
                               context: grpc.aio.ServicerContext) -> inference_pb2.CompletionResponse:
        result = await self._complete(COMPLETIONS, _body(request), request.purpose, context)
        return inference_pb2.CompletionResponse(
            id=result.get("id", ""), model=result["model"], created=int(result.get("created", 0)),
            choices=[_choice(c) for c in result["choices"]], usage=_usage(result.get("usage")))

    async def StreamCompletion(self, request: inference_pb2.CompletionRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[inference_pb2.CompletionChunk]:
        async for chunk in self._stream(COMPLETIONS, _body(request), request.include_usage, request.purpose,
                                        context):
            yield chunk

    async def GetUsage(self, request: inference_pb2.GetUsageRequest,
                       context: grpc.aio.ServicerContext) -> inference_pb2.GetUsageResponse:
        if self.deps.db is None:
            raise Unavailable("usage is not stored by this deployment")
        q = usage_mod.make_query(request.start_date, request.end_date, request.model,
                                 request.avatar if request.avatar else None, purpose=request.purpose or None)
        rows = await asyncio.to_thread(usage_mod.daily_usage, self.deps.db, current_principal().tenant_id, q)
        return inference_pb2.GetUsageResponse(rows=[inference_pb2.UsageRow(
            date=r["date"], model=r["model"], avatar=r["avatar"], purpose=r["purpose"], messages=r["messages"],
            input_tokens=r["input_tokens"], output_tokens=r["output_tokens"], cost_usd=r["cost_usd"])
            for r in rows])

    async def GetModelPrice(self, request: inference_pb2.GetModelPriceRequest,
                            context: grpc.aio.ServicerContext) -> inference_pb2.ModelPrice:
        model, price = await service.model_price(self.deps, current_principal().tenant_id, request.model)
        return inference_pb2.ModelPrice(model=model.id, input_per_million=price.input,
                                        output_per_million=price.output, base_model=model.base_model or model.id,
                                        fine_tuned=bool(model.adapter_name))

    async def ListStoredCompletions(self, request: inference_pb2.ListStoredCompletionsRequest,
                                    context: grpc.aio.ServicerContext,
                                    ) -> AsyncIterator[inference_pb2.StoredCompletionExample]:
        """The matching stored completions as training examples, read a page at a time."""
        if self.deps.db is None:
            raise Unavailable("stored completions are not kept by this deployment")
        if request.limit < 0:
            raise InvalidArgument("limit must not be negative", param="limit")
        tenant_id = current_principal().tenant_id
        flt = stored.TrainingFilter(
            min_rating=request.min_rating if request.HasField("min_rating") else None,
            gold=request.gold, model=request.model or None, avatar=request.avatar or None,
            metadata=dict(request.metadata), created_after=request.created_after or None)
        left = request.limit or DEFAULT_TRAINING_LIMIT
        cursor = None
        while left > 0:
            page, cursor = await asyncio.to_thread(stored.training_page, self.deps, tenant_id, flt, cursor,
                                                   min(left, TRAINING_PAGE))
            for example in page:
                yield example
            left -= len(page)
            if cursor is None:
                return

    async def RecordFeedback(self, request: inference_pb2.RecordFeedbackRequest,
                             context: grpc.aio.ServicerContext) -> inference_pb2.CompletionFeedback:
        """One rater's feedback on a stored completion: the REST endpoint's logic."""
        if not request.completion_id:
            raise InvalidArgument("completion_id is required", param="completion_id")
        body = _feedback_body(request)
        principal = current_principal()
        row = await asyncio.to_thread(stored.post_feedback, self.deps, principal.tenant_id, request.completion_id,
                                      body, principal.actor)
        return _feedback(row)

    async def SummarizeFeedback(self, request: inference_pb2.SummarizeFeedbackRequest,
                                context: grpc.aio.ServicerContext) -> inference_pb2.SummarizeFeedbackResponse:
        """The feedback on an avatar's stored completions per (model, variant), with intervals."""
        rows = await asyncio.to_thread(review.summarize, self.deps, current_principal().tenant_id, request.avatar,
                                       request.since)
        return inference_pb2.SummarizeFeedbackResponse(variants=[variant_proto(r) for r in rows])


def _interval(value: tuple[float, float] | None) -> inference_pb2.Interval | None:
    return None if value is None else inference_pb2.Interval(low=value[0], high=value[1])


def variant_proto(row: dict[str, Any]) -> inference_pb2.VariantFeedback:
    """One row of :func:`coachforge_inference.review.summarize` as a :class:`VariantFeedback`."""
    msg = inference_pb2.VariantFeedback(
        model=row["model"], variant=row["variant"], completions=row["completions"], reviewed=row["reviewed"],
        rated=row["rated"], mean_rating_interval=_interval(row["mean_rating_interval"]), gold=row["gold"],
        thumbs_up=row["thumbs_up"], thumbs_down=row["thumbs_down"])
    if row["mean_rating"] is not None:
        msg.mean_rating = row["mean_rating"]
    if row["rating_stddev"] is not None:
        msg.rating_stddev = row["rating_stddev"]
    for name, interval in (("gold_rate", "gold_rate_interval"), ("thumbs_up_rate", "thumbs_up_interval"),
                           ("thumbs_down_rate", "thumbs_down_interval")):
        if row[name] is not None:
            rate, bounds = row[name]
            setattr(msg, name, rate)
            getattr(msg, interval).CopyFrom(_interval(bounds))
    return msg


def registration(deps: InferenceDeps) -> ServiceRegistration:
    return ServiceRegistration(inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
                               InferenceServicer(deps), inference_pb2_grpc.add_InferenceServiceServicer_to_server)
