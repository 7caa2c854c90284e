"""Throughput of an eval run against sending the same completions straight to inference.

Starts the all-in-one stack (its own data dir and free ports; the evaluator samples
``--concurrency`` items of a run at a time), then, in one process:

1. sends ``--items`` chat completions to inference over gRPC (``StreamChatCompletion``, as the
   evaluator does) from ``--concurrency`` threads, and times them;
2. runs an eval of the same ``--items`` items (the same prompts) with two cheap graders
   (``string_check`` and ``json_check``) through the Evals API, timed from the run's creation to
   its completion as the evaluator reports it;
3. sends the direct completions once more (the baseline is the mean of 1 and 3, so that a warmer
   engine favours neither side),

and prints items/s of each and their ratio, plus the graders' CPU per item measured here
(``bench/grader_cpu.py`` has the details per grader).

    .venv/bin/python bench/eval_throughput.py [--items 1000] [--concurrency 8] [--max-tokens 8]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from openai import OpenAI

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_evaluator import graders
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_launcher.settings import StackSettings
from coachforge_launcher.stack import Stack
from coachforge_shared.settings import PlatformSettings

CRITERIA = [
    {"type": "string_check", "name": "says yes", "input": "{{sample.output_text}}", "reference": "yes",
     "operation": "ilike"},
    {"type": "json_check", "name": "is json", "input": "{{sample.output_text}}"},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def questions(n: int) -> list[str]:
    return [f"Question {i}: is {i} an even number? Answer yes or no." for i in range(n)]


def direct(target: str, api_key: str, prompts: list[str], concurrency: int, max_tokens: int) -> float:
    """Items per second of the completions sent straight to inference over gRPC."""
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        metadata = (("authorization", f"Bearer {api_key}"),)

        def one(prompt: str) -> None:
            request = inference_pb2.ChatCompletionRequest(
                model=BASE_MODEL_ID, messages=[inference_pb2.ChatMessage(role="user", content=prompt)],
                temperature=0, max_completion_tokens=max_tokens, include_usage=True)
            for _ in stub.StreamChatCompletion(request, metadata=metadata, timeout=600):
                pass

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, prompts))
        return len(prompts) / (time.perf_counter() - started)


def evaluated(client: OpenAI, prompts: list[str], max_tokens: int) -> tuple[float, dict[str, Any]]:
    """Items per second of an eval run over the same prompts (creation to completion)."""
    ev = client.evals.create(name="throughput", data_source_config={
        "type": "custom", "item_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
        "include_sample_schema": True}, testing_criteria=CRITERIA)  # type: ignore[arg-type]
    started = time.perf_counter()
    run = client.evals.runs.create(ev.id, data_source={
        "type": "completions", "model": BASE_MODEL_ID,
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": max_tokens},
        "source": {"type": "file_content", "content": [{"item": {"q": q}} for q in prompts]}})
    while run.status not in ("completed", "failed", "canceled"):
        time.sleep(0.2)
        run = client.evals.runs.retrieve(run.id, eval_id=ev.id)
    elapsed = time.perf_counter() - started
    return len(prompts) / elapsed, run.result_counts.model_dump()


def grader_cpu_us(n: int = 5000) -> float:
    criteria = graders.validate_criteria(CRITERIA)
    sample = {"model": BASE_MODEL_ID, "output_text": '{"answer": "yes"}', "output_json": {"answer": "yes"}}
    started = time.process_time()
    for i in range(n):
        for criterion in criteria:
            graders.grade(criterion, {"q": str(i)}, sample, None)
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    prompts = questions(args.items)
    with tempfile.TemporaryDirectory() as tmp:
        platform = PlatformSettings(data_dir=Path(tmp), api_key="cf-bench-key-" + "0" * 24)
        settings = StackSettings(http_port=free_port(), grpc_port=free_port(), engine_port=free_port(),
                                 broker_port=free_port(), worker_metrics_port=free_port(), metrics_port=free_port(),
                                 engine_max_model_len=1024)
        stack = Stack(platform, settings, env={"COACHFORGE_EVALUATOR_RUN_CONCURRENCY": str(args.concurrency)})
        prepared = stack.start()
        try:
            target = f"127.0.0.1:{settings.grpc_port}"
            client = OpenAI(base_url=stack.base_url, api_key=prepared.api_key, max_retries=0, timeout=600)
            direct(target, prepared.api_key, prompts[:16], args.concurrency, args.max_tokens)  # warm-up
            before = direct(target, prepared.api_key, prompts, args.concurrency, args.max_tokens)
            through_eval, counts = evaluated(client, prompts, args.max_tokens)
            after = direct(target, prepared.api_key, prompts, args.concurrency, args.max_tokens)
        finally:
            stack.stop()
    baseline = (before + after) / 2
    print(f"items={args.items} concurrency={args.concurrency} max_tokens={args.max_tokens}")
    print(f"direct to inference (gRPC)   {before:7.2f} items/s, again {after:7.2f} items/s")
    print(f"eval run (2 graders)         {through_eval:7.2f} items/s   result_counts={counts}")
    print(f"ratio eval / direct          {through_eval / baseline:7.3f}")
    print(f"graders' CPU per item        {grader_cpu_us():7.1f} us (string_check + json_check, in this process)")


if __name__ == "__main__":
    main()
