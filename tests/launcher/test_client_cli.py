"""The client commands of ``coachforge`` against the running stack, as a user runs them after the
demo: ``models list``, ``chat`` (one message, and a conversation read from stdin), ``jobs list``,
``jobs follow`` of a short real fine-tuning job to its end and of a cancelled one, and ``usage``;
a wrong key is one line on stderr and exit code 1."""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from coachforge_launcher.cli import main
from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack


def _api(stack: Any) -> list[str]:
    return ["--base-url", stack.base_url.removesuffix("/v1"), "--api-key", stack.api_key]


def _training_file(client: OpenAI, examples: int = 10) -> str:
    lines = [json.dumps({"messages": [{"role": "user", "content": f"Is a {i + 4} km jog fine after a rest day?"},
                                      {"role": "assistant", "content": f"Yes, {i + 4} km easy is a good restart."}]})
             for i in range(examples)]
    return client.files.create(file=("cli.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune").id


def test_models_list_and_chat(stack: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["models", "list", *_api(stack)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["ID", "OWNED", "BY", "CREATED"]
    assert any(line.split()[0] == BASE_MODEL_ID for line in out.splitlines()[1:])

    assert main(["chat", BASE_MODEL_ID, "-m", "Say hello to a runner.", "--max-tokens", "12", "--temperature", "0",
                 "--verbose", *_api(stack)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert f"[{BASE_MODEL_ID}: " in captured.err and "completion tokens]" in captured.err

    # A conversation from stdin (not a terminal): one message per line; /reset forgets the earlier turns.
    monkeypatch.setattr(sys, "stdin", io.StringIO("Name one recovery food.\n/reset\nName one stretch.\n"))
    assert main(["chat", BASE_MODEL_ID, "--max-tokens", "8", "--temperature", "0", "--verbose", *_api(stack)]) == 0
    captured = capsys.readouterr()
    assert "(conversation cleared)" in captured.out
    prompts = [int(line.split(": ")[1].split()[0]) for line in captured.err.splitlines() if line.startswith("[")]
    assert len(prompts) == 2 and prompts[1] < prompts[0] + 8  # the second turn was sent without the first


def test_jobs_list_follow_and_usage(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    client = OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=120)
    training_file = _training_file(client)
    job = client.fine_tuning.jobs.create(training_file=training_file, model=BASE_MODEL_ID,
                                         hyperparameters={"n_epochs": 1, "batch_size": 5})  # two steps
    cancelled = client.fine_tuning.jobs.create(training_file=training_file, model=BASE_MODEL_ID,
                                               hyperparameters={"n_epochs": 1, "batch_size": 5})
    client.fine_tuning.jobs.cancel(cancelled.id)

    assert main(["jobs", "list", "--limit", "5", *_api(stack)]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert job.id in rows and rows[cancelled.id] in ("cancelled", "running")

    # Followed to its end in a child process, as in a terminal: the bar reaches the job's last step.
    done = subprocess.run([str(Path(sys.executable).parent / "coachforge"), "jobs", "follow", job.id, *_api(stack)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    finished = client.fine_tuning.jobs.retrieve(job.id)
    assert done.stdout.strip() == f"{job.id} succeeded: {finished.fine_tuned_model}"
    assert "2/2" in done.stderr and "loss=" in done.stderr  # the progress bar's last state
    assert "The job has successfully completed." in done.stderr  # the job's messages

    assert main(["jobs", "follow", cancelled.id, "--quiet", *_api(stack)]) == 1
    assert capsys.readouterr().err.strip() == f"{cancelled.id} cancelled"

    avatar = f"cli-{secrets.token_hex(3)}"
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    assert httpx.post(f"{stack.base_url}/avatars", headers=headers,
                      json={"name": avatar, "model": BASE_MODEL_ID}).status_code == 200
    assert main(["chat", avatar, "-m", "Hi!", "--max-tokens", "4", *_api(stack)]) == 0
    capsys.readouterr()
    billed: list[dict[str, Any]] = []
    for _ in range(120):  # usage is counted from events, a moment after the answer
        billed = httpx.get(f"{stack.base_url}/usage", headers=headers, params={"avatar": avatar}).json()["data"]
        if billed:
            break
        time.sleep(0.5)
    assert main(["usage", "--avatar", avatar, *_api(stack)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["DATE", "MODEL", "AVATAR"]
    assert out[1].split()[1:3] == [BASE_MODEL_ID, avatar] and out[1].split()[4] == "1"
    assert out[-1].startswith("total: 1 requests, ")


def test_a_wrong_key_is_one_line_and_exit_code_1(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--base-url", stack.base_url, "--api-key", "cf-wrong-" + "0" * 40]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("coachforge models list: 401: ") and len(err.splitlines()) == 1
