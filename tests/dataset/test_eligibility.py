"""Fine-tuning eligibility: one scan of a stored file counts usable examples and, for the others,
the reason (duplicate, too_short, rules_rejected), with advice worded in one place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coachforge_dataset import service, versions
from coachforge_dataset.grpc import DatasetServicer
from coachforge_dataset.pipeline.eligibility import eligibility_messages
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import NotFound
from polarize.prompt import SYSTEM_PROMPT
from polarize.synthetic import generate_examples


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> DatasetDeps:
    create_tenant(db, "acme")
    return DatasetDeps(db=db, settings=DatasetSettings(trainer_grpc_target=""), files_dir=tmp_path / "files",
                       models_dir=tmp_path / "models")


def chat(user: str | None, answer: str, system: str | None = None) -> str:
    messages = [{"role": "system", "content": system}] if system else []
    if user is not None:
        messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": answer})
    return json.dumps({"messages": messages})


def upload(deps: DatasetDeps, lines: list[str]) -> str:
    content = ("\n".join(lines) + "\n").encode()
    return service.store_upload(deps, "acme", "train.jsonl", "fine-tune", [content]).id


def test_counts_usable_and_each_reason_once(deps: DatasetDeps) -> None:
    coach = [json.dumps(e.chat) for e in generate_examples(3, seed=7) if e.chat["messages"][0]["content"]
             == SYSTEM_PROMPT]
    assert coach, "the generator makes coach conversations answered with a modification"
    lines = [
        chat("Easy 5 km today?", "Yes, keep it conversational."),                       # usable
        chat("Easy 6 km today?", "Yes, and hydrate well."),                              # usable
        chat("easy 5 KM   today?", "yes, keep it conversational."),                      # duplicate (case/space)
        chat("Easy 6 km today?", "Yes, and hydrate well."),                              # duplicate
        chat("Rest day?", "ok"),                                                         # too_short (2 chars)
        chat(None, "A long answer without any question before it.", system="Be brief"),  # too_short (no user)
        chat("Can I skip the intervals?", "Sure, just skip them this week.", system=SYSTEM_PROMPT),  # rules_rejected
        chat("Move my run?", json.dumps({"operations": [{"op": "explode"}]})),          # rules_rejected
        *coach,                                                                          # usable
    ]
    found = versions.check_eligibility(deps, "acme", upload(deps, lines))
    assert found.examples == len(lines)
    assert found.usable == 2 + len(coach)
    assert dict(found.unusable) == {"duplicate": 2, "too_short": 2, "rules_rejected": 2}
    texts = eligibility_messages()
    advice = found.advice()
    assert len(advice) == 3 and advice[0].startswith("2 examples " + texts["duplicate"].description)
    assert texts["rules_rejected"].advice in advice[2]
    assert [s.line for s in found.samples] == [3, 4, 5, 6, 7]
    assert found.message().startswith(f"{2 + len(coach)} of {len(lines)} examples usable; unusable: "
                                      "2 duplicate, 2 too_short, 2 rules_rejected (line 3: messages: ")


def test_answer_length_threshold_is_a_setting(deps: DatasetDeps) -> None:
    file_id = upload(deps, [chat("Rest?", "Yes."), chat("Rest now?", "Yes, rest.")])
    assert versions.check_eligibility(deps, "acme", file_id).usable == 2
    deps.settings.eligibility_min_answer_chars = 5
    found = versions.check_eligibility(deps, "acme", file_id)
    assert found.usable == 1 and dict(found.unusable) == {"too_short": 1}
    assert "shorter than 5 characters" in found.advice()[0]


def test_unknown_file_names_the_id_parameter(deps: DatasetDeps) -> None:
    with pytest.raises(NotFound) as err:
        versions.check_eligibility(deps, "acme", "file-missing")
    assert err.value.param == "id"


def test_grpc_answer_carries_counts_reasons_and_words(deps: DatasetDeps) -> None:
    from coachforge.dataset.v1 import dataset_pb2
    from coachforge_shared.auth import Principal, reset_principal, set_principal

    file_id = upload(deps, [chat("Hill repeats?", "Do six, jog down easy.")] * 3)
    token = set_principal(Principal(tenant_id="acme"))
    try:
        answer = DatasetServicer(deps).CheckEligibility(dataset_pb2.CheckEligibilityRequest(id=file_id), None)
    finally:
        reset_principal(token)
    assert (answer.examples, answer.usable) == (3, 1)
    assert [(u.reason, u.count, u.description) for u in answer.unusable] == [
        ("duplicate", 2, eligibility_messages()["duplicate"].description)]
    assert [i.line for i in answer.issues] == [2, 3] and len(answer.advice) == 1
