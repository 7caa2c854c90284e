"""Schemathesis over every operation of the running stack's live ``/openapi.json``: generated valid
and invalid requests (a few per operation), sent with a fresh tenant's read+write key, and checked
for no server error and for answers that match what the schema declares: status code, content
type and body.

The budget is bounded: :data:`EXAMPLES` requests per operation, Hypothesis's generate phase only
(no shrinking). Knobs that would make the shared stack generate or train for long are clamped
before a request is sent (:data:`CLAMPS`, :data:`QUIET`), and whatever fine-tuning job, eval run,
comparison or retrain the fuzzer managed to start for its tenant is cancelled afterwards."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NotSet

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack

EXAMPLES = 12
"""Generated requests per operation (valid and invalid ones together)."""

CLAMPS = {"max_tokens": 8, "max_completion_tokens": 8, "n": 2, "count": 5, "n_epochs": 1, "batch_size": 4,
          "lora_r": 8, "max_length": 256, "num_prompts": 5}
"""Upper bounds on generation and training knobs, wherever they appear in a request body."""

INFERENCE = ("/v1/chat/completions", "/v1/completions")

QUIET = {
    "/v1/chat/completions": {"max_tokens": CLAMPS["max_tokens"]},
    "/v1/completions": {"max_tokens": CLAMPS["max_tokens"]},
    # An athlete the fuzzer created may be found ("0" is a favourite id): the rule-based coach answers
    # then, not the coach's model (its full answer takes most of a minute on this CPU).
    "/v1/coach/athletes/{athlete_id}/recommendations": {"model": "fuzz-no-such-model"},
}
"""What a request to these operations gets where it does not say, so that no engine generates for long."""

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")


@dataclass
class FuzzTenant:
    root: str
    tenant: str
    headers: dict[str, str]


@dataclass
class Tally:
    operations: set[str] = field(default_factory=set)
    requests: int = 0
    answered: int = 0
    """Requests answered with a 2xx."""
    failing: set[str] = field(default_factory=set)
    seconds: dict[str, float] = field(default_factory=dict)


def _clamp(value: Any) -> None:
    """Lower every :data:`CLAMPS` knob above its bound, in place, at any depth (too low stays: it is
    invalid input the service must refuse)."""
    if isinstance(value, dict):
        for key, item in value.items():
            bound = CLAMPS.get(key)
            if bound is not None and isinstance(item, int | float) and not isinstance(item, bool) and item > bound:
                value[key] = bound
            else:
                _clamp(item)
    elif isinstance(value, list):
        for item in value:
            _clamp(item)


def _quiet(case: Any) -> None:
    """Fill in :data:`QUIET` where the request leaves it open (``max_tokens`` unless
    ``max_completion_tokens`` is given)."""
    defaults = QUIET.get(case.operation.path)
    if defaults is None:
        return
    if case.body is None or isinstance(case.body, NotSet):  # no body, or JSON null: the defaults apply
        case.body, case.media_type = {}, "application/json"
    if not isinstance(case.body, dict) or case.body.get("max_completion_tokens") is not None:
        return
    for key, value in defaults.items():
        if case.body.get(key) is None:
            case.body[key] = value


def _cancel_leftovers(client: httpx.Client) -> list[str]:
    """Cancel what the fuzzer may have started for its tenant; the paths that refused to cancel."""
    refused: list[str] = []

    def cancel(path: str) -> None:
        r = client.post(path)
        if r.status_code not in (200, 404, 409):
            refused.append(f"{path}: {r.status_code} {r.text[:200]}")

    for job in client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]:
        if job["status"] in ("validating_files", "queued", "running"):
            cancel(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    for ev in client.get("/v1/evals", params={"limit": 100}).json()["data"]:
        for run in client.get(f"/v1/evals/{ev['id']}/runs", params={"limit": 100}).json()["data"]:
            if run["status"] in ("queued", "in_progress"):
                cancel(f"/v1/evals/{ev['id']}/runs/{run['id']}/cancel")
    for comparison in client.get("/v1/comparisons", params={"limit": 100}).json()["data"]:
        if comparison["status"] == "generating":
            cancel(f"/v1/comparisons/{comparison['id']}/cancel")
    for avatar in client.get("/v1/avatars").json()["data"]:
        for run in client.get(f"/v1/avatars/{avatar['name']}/retrains").json()["data"]:
            if run["status"] not in ("promoted", "rejected", "failed", "canceled"):
                cancel(f"/v1/avatars/{avatar['name']}/retrains/{run['id']}/cancel")
    return refused


@pytest.fixture(scope="module")
def fuzz_tenant(stack) -> Iterator[FuzzTenant]:  # type: ignore[no-untyped-def]
    """A tenant of its own with a read+write key (no admin: the admin API answers it 403)."""
    root = stack.base_url.removesuffix("/v1")
    operator = {"Authorization": f"Bearer {stack.api_key}"}
    tenant = f"fuzz-{secrets.token_hex(4)}"
    assert httpx.post(f"{root}/v1/tenants", headers=operator, json={"id": tenant}).status_code == 200
    made = httpx.post(f"{root}/v1/keys", headers=operator,
                      json={"tenant": tenant, "name": "fuzzer", "scopes": ["read", "write"]})
    assert made.status_code == 200, made.text
    headers = {"Authorization": f"Bearer {made.json()['key']}"}
    yield FuzzTenant(root, tenant, headers)
    with httpx.Client(base_url=root, headers=headers, timeout=60) as client:
        refused = _cancel_leftovers(client)
        jobs = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
    assert not refused, refused
    assert not [j["id"] for j in jobs if j["status"] in ("validating_files", "queued")], jobs


@pytest.fixture
def api_schema(fuzz_tenant: FuzzTenant) -> Any:
    config = schemathesis.Config.from_dict({
        "base-url": fuzz_tenant.root,
        "headers": fuzz_tenant.headers,
        "request-timeout": 120,
        "generation": {"with-security-parameters": False},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })
    schema = schemathesis.openapi.from_url(f"{fuzz_tenant.root}/openapi.json", config=config)

    @schema.hook
    def flatmap_body(context: Any, body: Any) -> Any:
        """Half the completion requests name the stack's real model, so that some are answered."""
        if context.operation is None or context.operation.path not in INFERENCE or not isinstance(body, dict):
            return st.just(body)
        return st.sampled_from([body, {**body, "model": BASE_MODEL_ID}])

    return schema


def _fuzz(operation: Any, tally: Tally) -> None:
    """:data:`EXAMPLES` valid and invalid requests to ``operation``, each checked against the schema."""
    modes = [GenerationMode.POSITIVE]
    if operation.definition.raw.get("parameters") or "requestBody" in operation.definition.raw:
        modes.append(GenerationMode.NEGATIVE)  # nothing to get wrong in a request without input

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of([operation.as_strategy(generation_mode=mode) for mode in modes]))
    def send(case: Any) -> None:
        _clamp(case.body)
        _clamp(case.query)
        _quiet(case)
        tally.requests += 1
        response = case.call_and_validate()
        tally.answered += response.status_code < 300

    tally.operations.add(operation.label)
    started = time.perf_counter()
    try:
        send()
    except BaseException:  # Schemathesis's failures are an exception group
        tally.failing.add(operation.label)
        raise
    finally:
        tally.seconds[operation.label] = time.perf_counter() - started


def test_every_operation_answers_as_declared(api_schema: Any, subtests: pytest.Subtests,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """No 5xx, and every status, content type and body is one the schema declares for it."""
    tally = Tally()
    operations = [result.ok() for result in api_schema.get_all_operations()]  # one described wrongly fails here
    for operation in operations:
        with subtests.test(msg=operation.label):
            _fuzz(operation, tally)
    failing = "".join(f"\n  failing: {label}" for label in sorted(tally.failing))
    slowest = max(tally.seconds, key=tally.seconds.__getitem__, default="none")
    line = (f"openapi fuzz: {len(tally.operations)} operations, {tally.requests} requests "
            f"({tally.answered} answered 2xx) in {sum(tally.seconds.values()):.0f} s (slowest: {slowest}, "
            f"{tally.seconds.get(slowest, 0.0):.1f} s), {len(tally.failing)} failing operations{failing}")
    with capsys.disabled():
        print(f"\n{line}")
    assert len(operations) > 90 and tally.operations == {op.label for op in operations}  # none skipped
