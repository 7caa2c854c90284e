"""Polarize coach domain code, used by the coach service and (through plug-ins) the dataset service.

Pure Python (pydantic 2 + stdlib): the modification schema, training-load maths, the
deterministic rule-based coach with its safety checks, the prompt renderer, the context
builder, the seeded synthetic-example generator and the coach evaluation scenarios
(:mod:`polarize.scenarios`, eval items for CoachForge's evaluator).  :mod:`polarize.plugins` offers the
``coach`` line format and synthetic data generator to CoachForge's dataset pipeline (entry
points ``coachforge.dataset_formats`` and ``coachforge.synthetic_generators``).
"""

from .load import LoadPoint, compute_load, load_on
from .prompt import CHAT_SYSTEM_PROMPT, SYSTEM_PROMPT, render_context
from .rules import (
    DEFAULT_CONFIG,
    AthleteState,
    Branch,
    PlannedWorkout,
    RuleConfig,
    RuleViolation,
    apply_modification,
    apply_operation,
    check_modification,
    check_operation,
    classify_state,
    recommend,
)
from .schema import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    InvalidModification,
    Modification,
    Operation,
    modification_json_schema,
    parse_modification,
    response_format,
)
from .synthetic import SyntheticExample, generate_examples, matches_expected, to_jsonl

__all__ = [
    "CHAT_SYSTEM_PROMPT",
    "DEFAULT_CONFIG",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "SYSTEM_PROMPT",
    "AthleteState",
    "Branch",
    "InvalidModification",
    "LoadPoint",
    "Modification",
    "Operation",
    "PlannedWorkout",
    "RuleConfig",
    "RuleViolation",
    "SyntheticExample",
    "apply_modification",
    "apply_operation",
    "check_modification",
    "check_operation",
    "classify_state",
    "compute_load",
    "generate_examples",
    "load_on",
    "matches_expected",
    "modification_json_schema",
    "parse_modification",
    "recommend",
    "render_context",
    "response_format",
    "to_jsonl",
]
