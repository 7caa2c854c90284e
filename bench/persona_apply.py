"""CPU time an avatar's persona adds to a chat request on inference's path.

Times :func:`coachforge_inference.persona.apply_persona` over ``--requests`` distinct chat request
bodies (10,000 by default; conversations of 1-12 turns, half with metadata, every fifth with its
own system message and every seventh with its own temperature) against the baseline the request
path pays without a persona (a plain ``dict(body)`` copy, in the same process, on the same bodies),
for three personas:

* ``prompt``: a system prompt of about 1,200 characters with two ``{metadata.<key>}`` placeholders
  and all six sampling defaults;
* ``full``: that, plus 10 few-shot turns and a JSON-schema response format;
* ``replace``: ``full`` with ``system_mode: replace``.

Prints CPU microseconds per request (``time.process_time``, best of ``--repeat`` runs) for the
baseline and each persona, the difference, and whether it meets the goal (at most 0.2 ms added
CPU per request).

    .venv/bin/python bench/persona_apply.py [--requests 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

from coachforge_inference.persona import apply_persona

GOAL_US = 200.0
WORDS = ("tempo", "recovery", "threshold", "easy", "long", "run", "ride", "sleep", "legs", "sore", "race", "week")


def make_bodies(n: int, seed: int = 0) -> list[tuple[dict[str, Any], dict[str, str]]]:
    rng = random.Random(seed)
    out: list[tuple[dict[str, Any], dict[str, str]]] = []
    for i in range(n):
        turns = rng.randint(1, 12) | 1  # ends with the user
        messages: list[dict[str, Any]] = []
        if i % 5 == 0:
            messages.append({"role": "system", "content": "Answer briefly."})
        for t in range(turns):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
            messages.append({"role": "user" if t % 2 == 0 else "assistant", "content": text})
        body: dict[str, Any] = {"model": "coach-anna", "messages": messages, "user": f"athlete-{i % 97}"}
        if i % 7 == 0:
            body["temperature"] = 0.9
        metadata = {"athlete": f"Athlete {i}", "sport": rng.choice(("run", "bike", "tri"))} if i % 2 else {}
        out.append((body, metadata))
    return out


def personas() -> dict[str, dict[str, Any]]:
    prompt = ("You are Coach Anna, an endurance coach. The athlete is {metadata.athlete}, training for "
              "{metadata.sport}. " + "Keep answers specific, kind and safe; never prescribe through pain. " * 16)
    sampling = {"temperature": 0.4, "top_p": 0.9, "max_tokens": 256, "stop": ["###"], "frequency_penalty": 0.2,
                "presence_penalty": 0.1}
    few_shot = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Example turn {i}: " + "easy run " * 8}
                for i in range(10)]
    schema = {"type": "json_schema", "json_schema": {"name": "plan", "schema": {
        "type": "object", "properties": {"changes": {"type": "array", "items": {"type": "object"}}}}}}
    basic = {"system_prompt": prompt, "system_mode": "prepend", "sampling": sampling, "few_shot": [],
             "response_format": None}
    full = {**basic, "few_shot": few_shot, "response_format": schema}
    return {"prompt": basic, "full": full, "replace": {**full, "system_mode": "replace"}}


def measure(fn: Callable[[dict[str, Any], dict[str, str]], Any], bodies: list[tuple[dict[str, Any], dict[str, str]]],
            repeat: int) -> float:
    """Best of ``repeat`` runs: CPU microseconds per request."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for body, metadata in bodies:
            fn(body, metadata)
        best = min(best, time.process_time() - start)
    return best / len(bodies) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bodies = make_bodies(args.requests)

    baseline = measure(lambda body, metadata: dict(body), bodies, args.repeat)
    print(f"{'case':<10} {'us/request':>11} {'added us':>9}  goal (<= {GOAL_US:.0f} us added)")
    print(f"{'baseline':<10} {baseline:>11.2f} {'-':>9}")
    worst = 0.0
    for name, persona in personas().items():
        apply_persona(bodies[0][0], persona, bodies[0][1])  # warm up
        took = measure(lambda body, metadata, p=persona: apply_persona(body, p, metadata), bodies, args.repeat)
        added = took - baseline
        worst = max(worst, added)
        print(f"{name:<10} {took:>11.2f} {added:>9.2f}  {'met' if added <= GOAL_US else 'NOT met'}")
    print(f"worst added CPU per request: {worst:.2f} us ({'meets' if worst <= GOAL_US else 'misses'} the goal)")


if __name__ == "__main__":
    main()
