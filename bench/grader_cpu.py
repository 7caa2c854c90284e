"""CPU time the evaluator's graders spend per item, for the cheap (non-model) graders.

Grades ``--items`` distinct items (10,000 by default) with two criteria at a time, as a run's
worker does, and prints the CPU time (``time.process_time``: user + system of this process) per
item in microseconds for each pair:

* ``string_check`` + ``json_check`` (with a small JSON Schema);
* ``string_check`` + ``text_similarity`` ``fuzzy_match``;
* and, for reference, the other text similarity metrics alone (BLEU, GLEU, ROUGE-L);
* the first two again with new but equal criterion dicts for every item (looked up by their JSON).

The first item of each pair is graded before the clock starts (imports, template compilation and
the criterion's preparation happen once per run, not per item).  The answers are short
coach-style texts and JSON objects of about 150 characters; every tenth is wrong, every
twentieth malformed.

    .venv/bin/python bench/grader_cpu.py [--items 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from typing import Any

from coachforge_evaluator.graders import grade, validate_criteria

CITIES = ("Paris", "Lyon", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Prague", "Dublin")


def make_items(n: int, seed: int = 0) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    rng = random.Random(seed)
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for i in range(n):
        city = rng.choice(CITIES)
        answer_city = city if i % 10 else rng.choice(CITIES)
        payload = {"city": answer_city, "population": rng.randint(10_000, 9_000_000),
                   "note": f"Item {i}: the answer is {answer_city}, as the reference says."}
        text = json.dumps(payload)
        if i % 20 == 7:
            text = text[:-5]  # malformed
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        out.append(({"city": city, "reference": f"Item {i}: the answer is {city}, as the reference says."},
                    {"output_text": text, "output_json": parsed, "model": "bench"}))
    return out


def measure(criteria: list[dict[str, Any]], items: list[tuple[dict[str, Any], dict[str, Any]]],
            repeat: int, *, fresh: bool = False) -> float:
    """Best of ``repeat`` runs: CPU microseconds per item for all ``criteria``.

    ``fresh``: every item gets its own equal copies of the criteria (made before the clock starts),
    as when a runner reads them again for each item.
    """
    first_item, first_sample = items[0]
    for crit in criteria:
        grade(crit, first_item, first_sample, None)  # warm: imports, compiled templates, prepared criterion
    per_item = [copy.deepcopy(criteria) if fresh else criteria for _ in items]
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for (item, sample), crits in zip(items, per_item, strict=True):
            for crit in crits:
                grade(crit, item, sample, None)
        best = min(best, time.process_time() - start)
    return best / len(items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    items = make_items(args.items)

    string_check = {"type": "string_check", "name": "city", "input": "{{sample.output_json.city}}",
                    "reference": "{{item.city}}", "operation": "eq"}
    json_check = {"type": "json_check", "name": "json", "schema": {
        "type": "object", "required": ["city", "population"],
        "properties": {"city": {"type": "string"}, "population": {"type": "integer", "minimum": 0},
                       "note": {"type": "string"}}}}
    def similarity(metric: str) -> dict[str, Any]:
        return {"type": "text_similarity", "name": metric, "input": "{{sample.output_json.note}}",
                "reference": "{{item.reference}}", "evaluation_metric": metric, "pass_threshold": 0.8}

    cases = [
        ("string_check + json_check", validate_criteria([string_check, json_check])),
        ("string_check + fuzzy_match", validate_criteria([string_check, similarity("fuzzy_match")])),
        ("bleu alone", validate_criteria([similarity("bleu")])),
        ("gleu alone", validate_criteria([similarity("gleu")])),
        ("rouge_l alone", validate_criteria([similarity("rouge_l")])),
    ]
    print(f"CPU time per item over {len(items)} items (best of {args.repeat}, time.process_time):")
    for label, criteria in cases:
        print(f"  {label:<46} {measure(criteria, items, args.repeat):8.1f} µs")
    for label, criteria in cases[:2]:
        label += " (new equal dicts)"
        print(f"  {label:<46} {measure(criteria, items, args.repeat, fresh=True):8.1f} µs")


if __name__ == "__main__":
    main()
