"""Testing criteria of evals (OpenAI Evals graders) and how one item's sample is graded.

Pure functions, no I/O: the runner hands :func:`grade` a validated criterion, the data source item,
the model's sample and a :data:`Judge` (a blocking call of the platform's inference) for the model
graders.  Criteria are checked and normalised once, when an eval is created or updated, by
:func:`validate_criteria`.

Types (OpenAI's shapes, ``openai.types.graders`` and ``eval_create_params.TestingCriterion``):

``string_check``
    ``operation`` ``eq`` / ``ne`` (case-sensitive equality / inequality), ``like`` (the input
    contains the reference) or ``ilike`` (contains, ignoring case); score 1 or 0, passed = score 1.
``text_similarity``
    ``evaluation_metric`` ``fuzzy_match`` (rapidfuzz ``WRatio`` with its default processor, the
    function OpenAI's grader guide uses), ``bleu`` (sacrebleu sentence BLEU, 0..1), ``gleu`` (NLTK
    ``sentence_gleu`` on sacrebleu's 13a tokens), ``rouge_1`` .. ``rouge_5`` and ``rouge_l``
    (Google's ``rouge-score``, F-measure); ``cosine`` and ``meteor`` are refused (they need an
    embedding model or WordNet data that this platform does not ship).  ``pass_threshold`` is
    required (as in OpenAI's API); passed = score >= pass_threshold.
``score_model``
    ``input`` messages (templated text), ``model``, ``range`` (default ``[0, 1]``),
    ``pass_threshold`` (default: the middle of ``range``), ``sampling_params``.  The judge answers
    ``{"steps": [{"description", "conclusion"}], "result": number}`` (strict JSON schema); a result
    outside ``range`` is truncated to it (as OpenAI documents), an answer without a numeric result
    (OpenAI scores those 0) is an error here, never a pass.
``label_model``
    ``input``, ``model``, ``labels``, ``passing_labels`` (a subset of ``labels``), and, unlike
    OpenAI's, optional ``sampling_params``: the judge answers ``{"steps": [...], "result": <one of
    labels>}``; score 1 and passed when the label is a passing one; any other label is an error.
``json_check`` (CoachForge's own)
    ``input`` (default ``{{sample.output_text}}``) must parse as JSON (surrounding whitespace aside; a
    Markdown-fenced answer is not JSON) and, when ``schema`` (a JSON Schema, checked with jsonschema's
    ``check_schema``) is given, validate against it; score 1 or 0, ``detail`` says why not.
any other type
    a grader plug-in (entry point group ``coachforge.graders``, see :mod:`coachforge_shared.plugins`)
    of that name; the built-in types always win over a plug-in of the same name.

``python`` and ``multi`` graders (code execution, reinforcement fine-tuning) are refused.

Templates: ``{{ item.field }}``, ``{{ item.a.b }}``, ``{{ item.list[0] }}``, ``{{ item["odd key"] }}``,
``{{ sample.output_text }}``, ``{{ sample.output_json.field }}``: the namespace ``item`` or ``sample``
and a JSON-path-like variable, as OpenAI's grader guide describes.  A string value is inserted as
it is, any other value as JSON; a path that does not exist (or holds ``null``) renders as the empty
string.  Compiled templates are cached by their text, and each criterion's prepared form (templates,
metric, compiled JSON Schema validator) by the criterion object, so grading an item does not parse
or validate anything again.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, TypeAlias

from coachforge_shared import plugins
from coachforge_shared.errors import InvalidArgument, NotFound

# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class GradeResult:
    """One criterion's grade of one item (``score`` and ``passed`` are ``None`` when it errored)."""

    name: str
    type: str
    score: float | None
    passed: bool | None
    error: str | None = None
    detail: dict[str, Any] | None = None


Judge = Callable[[str, list[dict[str, str]], dict[str, Any], dict[str, Any]], str]
"""``judge(model, messages, response_format, sampling_params)`` -> the model's answer text.

A blocking call the runner supplies (it calls the platform's inference).  ``messages`` are
``{"role": "system"|"user"|"assistant", "content": str}`` (OpenAI's ``developer`` role is sent as
``system``), ``response_format`` is a strict ``json_schema`` response format, ``sampling_params`` the
criterion's under the platform's request names (``temperature``, ``top_p``, ``seed``,
``max_completion_tokens``: see :func:`_judge_params`), possibly empty."""

STRING_CHECK: Final = "string_check"
TEXT_SIMILARITY: Final = "text_similarity"
SCORE_MODEL: Final = "score_model"
LABEL_MODEL: Final = "label_model"
JSON_CHECK: Final = "json_check"
BUILTIN_TYPES: Final = (STRING_CHECK, TEXT_SIMILARITY, SCORE_MODEL, LABEL_MODEL, JSON_CHECK)

OPERATIONS: Final = ("eq", "ne", "like", "ilike")
ROUGE_METRICS: Final = ("rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")
METRICS: Final = ("fuzzy_match", "bleu", "gleu", *ROUGE_METRICS)
REFUSED_METRICS: Final = {
    "cosine": "it needs an embedding model (OpenAI's text-embedding-3-large), which this platform does not serve",
    "meteor": "it needs NLTK's WordNet data, which this platform does not ship",
}
REFUSED_TYPES: Final = {
    "python": "python graders run arbitrary code, which this platform does not do",
    "multi": "multi graders belong to reinforcement fine-tuning and are not supported in evals here",
}
MESSAGE_ROLES: Final = ("user", "assistant", "system", "developer")
SAMPLING_PARAMS: Final = ("max_completions_tokens", "reasoning_effort", "seed", "temperature", "top_p")
REASONING_EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
TEXT_PART_TYPES: Final = ("input_text", "output_text")

_COMMON_KEYS: Final = ("type", "name")
_KEYS: Final[dict[str, tuple[str, ...]]] = {
    STRING_CHECK: ("input", "reference", "operation"),
    TEXT_SIMILARITY: ("input", "reference", "evaluation_metric", "pass_threshold"),
    SCORE_MODEL: ("input", "model", "range", "pass_threshold", "sampling_params"),
    LABEL_MODEL: ("input", "model", "labels", "passing_labels", "sampling_params"),
    JSON_CHECK: ("input", "schema"),
}


# --------------------------------------------------------------------------- templates


class TemplateError(ValueError):
    """A template that does not follow ``{{ namespace.variable }}``."""


NAMESPACES: Final = ("item", "sample")
_MISSING: Final = object()
_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")
_SEGMENT = re.compile(r"""\.([^.\[\]\s"'{}]+)|\[\s*(\d+)\s*\]|\[\s*"([^"]*)"\s*\]|\[\s*'([^']*)'\s*\]""")

Path: TypeAlias = tuple[str | int, ...]
_Part: TypeAlias = str | tuple[str, Path]


def _parse_reference(expr: str) -> tuple[str, Path]:
    head = _NAME.match(expr)
    if head is None:
        raise TemplateError(f"{{{{{expr}}}}} must be {{{{ namespace.variable }}}}, e.g. {{{{ item.reference }}}}")
    namespace = head.group(1)
    if namespace not in NAMESPACES:
        raise TemplateError(f"{{{{{expr}}}}} uses the namespace {namespace!r}; only 'item' and 'sample' exist")
    path: list[str | int] = []
    pos = head.end()
    rest = expr.rstrip()
    while pos < len(rest):
        seg = _SEGMENT.match(rest, pos)
        if seg is None:
            raise TemplateError(f"{{{{{expr}}}}}: cannot read the variable path from {rest[pos:]!r}")
        dotted, index, dq, sq = seg.groups()
        path.append(int(index) if index is not None else dotted if dotted is not None else dq if dq is not None
                    else sq)
        pos = seg.end()
    if not path:
        raise TemplateError(f"{{{{{expr}}}}} names no variable: write {{{{ {namespace}.<field> }}}}")
    return namespace, tuple(path)


@lru_cache(maxsize=4096)
def compile_template(template: str) -> tuple[_Part, ...]:
    """The template as literal strings and ``(namespace, path)`` references (cached by its text)."""
    parts: list[_Part] = []
    pos = 0
    while True:
        start = template.find("{{", pos)
        if start < 0:
            if pos < len(template):
                parts.append(template[pos:])
            return tuple(parts)
        end = template.find("}}", start + 2)
        if end < 0:
            raise TemplateError(f"unclosed '{{{{' at character {start}")
        if start > pos:
            parts.append(template[pos:start])
        parts.append(_parse_reference(template[start + 2:end]))
        pos = end + 2


def _lookup(root: Any, path: Path) -> Any:
    cur = root
    for seg in path:
        if isinstance(cur, Mapping):
            key = seg if isinstance(seg, str) else str(seg)
            if key not in cur:
                return _MISSING
            cur = cur[key]
        elif isinstance(cur, list | tuple):
            if isinstance(seg, int):
                idx = seg
            elif seg.isdigit():
                idx = int(seg)
            else:
                return _MISSING
            if idx >= len(cur):
                return _MISSING
            cur = cur[idx]
        else:
            return _MISSING
    return cur


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is _MISSING or value is None:
        return ""
    return json.dumps(value, ensure_ascii=False)


def _render(parts: tuple[_Part, ...], item: Mapping[str, Any], sample: Mapping[str, Any] | None) -> str:
    if len(parts) == 1:
        only = parts[0]
        if isinstance(only, str):
            return only
        ns, path = only
        return _text(_lookup(item if ns == "item" else sample, path))
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        else:
            ns, path = part
            out.append(_text(_lookup(item if ns == "item" else sample, path)))
    return "".join(out)


def render(template: str, item: dict[str, Any], sample: dict[str, Any] | None) -> str:
    """``template`` with every ``{{ item.… }}`` / ``{{ sample.… }}`` replaced.

    Strings are inserted as they are, other values as JSON; a missing path (or ``null``, or any
    ``sample`` reference without a sample) renders as ``""``.  Raises :class:`InvalidArgument` for a
    malformed template.
    """
    try:
        parts = compile_template(template)
    except TemplateError as err:
        raise InvalidArgument(f"Invalid template: {err}", code="invalid_template") from err
    return _render(parts, item, sample)


# --------------------------------------------------------------------------- validation


def _bad(param: str, message: str, code: str = "invalid_testing_criteria") -> InvalidArgument:
    return InvalidArgument(message, param=param, code=code)


def _number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(param, f"{param} must be a finite number, got {value!r}")
    return float(value)


def _string(crit: Mapping[str, Any], key: str, param: str, *, template: bool = False,
            default: str | None = None) -> str:
    value = crit.get(key, default)
    if value is None:
        raise _bad(f"{param}.{key}", f"{param}.{key} is required")
    if not isinstance(value, str):
        raise _bad(f"{param}.{key}", f"{param}.{key} must be a string, got {type(value).__name__}")
    if template:
        _check_template(value, f"{param}.{key}")
    return value


def _check_template(value: str, param: str) -> None:
    try:
        compile_template(value)
    except TemplateError as err:
        raise _bad(param, f"{param} is not a valid template: {err}", "invalid_template") from err


def _content_texts(content: Any, param: str) -> list[str]:
    """The text parts of a message's content (validated), as templates."""
    if isinstance(content, str):
        _check_template(content, param)
        return [content]
    if isinstance(content, Mapping):
        kind = content.get("type")
        if kind not in TEXT_PART_TYPES:
            raise _bad(f"{param}.type", f"{param}: only text content (type input_text or output_text) can be sent "
                       f"to a judge model here, got type {kind!r}")
        text = content.get("text")
        if not isinstance(text, str):
            raise _bad(f"{param}.text", f"{param}.text must be a string")
        _check_template(text, f"{param}.text")
        return [text]
    if isinstance(content, list) and content:
        texts: list[str] = []
        for i, part in enumerate(content):
            texts += _content_texts(part, f"{param}[{i}]")
        return texts
    raise _bad(param, f"{param} must be a string, a text content object or a non-empty list of them")


def _messages(crit: Mapping[str, Any], param: str) -> list[dict[str, Any]]:
    messages = crit.get("input")
    if not isinstance(messages, list) or not messages:
        raise _bad(f"{param}.input", f"{param}.input must be a non-empty list of messages "
                   "({\"role\": ..., \"content\": ...})")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        p = f"{param}.input[{i}]"
        if not isinstance(msg, Mapping):
            raise _bad(p, f"{p} must be an object with role and content")
        unknown = sorted(set(msg) - {"role", "content", "type"})
        if unknown:
            raise _bad(f"{p}.{unknown[0]}", f"{p} has unknown field {unknown[0]!r} (role, content, type)")
        if msg.get("type", "message") != "message":
            raise _bad(f"{p}.type", f"{p}.type must be 'message'")
        if msg.get("role") not in MESSAGE_ROLES:
            raise _bad(f"{p}.role", f"{p}.role must be one of {', '.join(MESSAGE_ROLES)}, got {msg.get('role')!r}")
        if "content" not in msg:
            raise _bad(f"{p}.content", f"{p}.content is required")
        _content_texts(msg["content"], f"{p}.content")
        out.append(json.loads(json.dumps(dict(msg))))
    return out


def _model(crit: Mapping[str, Any], param: str) -> str:
    model = _string(crit, "model", param)
    if not model.strip():
        raise _bad(f"{param}.model", f"{param}.model must name the judge model")
    return model


def _sampling_params(crit: Mapping[str, Any], param: str) -> dict[str, Any] | None:
    params = crit.get("sampling_params")
    if params is None:
        return None
    p = f"{param}.sampling_params"
    if not isinstance(params, Mapping):
        raise _bad(p, f"{p} must be an object")
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if key not in SAMPLING_PARAMS:
            raise _bad(f"{p}.{key}", f"{p} has unknown parameter {key!r} (known: {', '.join(SAMPLING_PARAMS)})")
        if key in ("max_completions_tokens", "seed"):
            if isinstance(value, bool) or not isinstance(value, int) or (key == "max_completions_tokens"
                                                                          and value < 1):
                raise _bad(f"{p}.{key}", f"{p}.{key} must be {'a positive' if key != 'seed' else 'an'} integer")
        elif key == "reasoning_effort":
            if value not in REASONING_EFFORTS:
                raise _bad(f"{p}.{key}", f"{p}.{key} must be one of {', '.join(REASONING_EFFORTS)}")
        else:
            number = _number(value, f"{p}.{key}")
            if (key == "temperature" and not 0 <= number <= 2) or (key == "top_p" and not 0 < number <= 1):
                raise _bad(f"{p}.{key}", f"{p}.{key} is out of range ({'0..2' if key == 'temperature' else '(0, 1]'})")
        out[key] = value
    return out


def _validate_builtin(kind: str, crit: Mapping[str, Any], param: str) -> dict[str, Any]:
    unknown = sorted(k for k, v in crit.items() if v is not None and k not in _COMMON_KEYS + _KEYS[kind])
    if unknown:
        raise _bad(f"{param}.{unknown[0]}", f"{param}: {kind} has no field {unknown[0]!r} "
                   f"(fields: {', '.join(_COMMON_KEYS + _KEYS[kind])})")
    out: dict[str, Any] = {}
    if kind == STRING_CHECK:
        out["input"] = _string(crit, "input", param, template=True)
        out["reference"] = _string(crit, "reference", param, template=True)
        op = crit.get("operation")
        if op not in OPERATIONS:
            raise _bad(f"{param}.operation", f"{param}.operation must be one of {', '.join(OPERATIONS)}, got {op!r}")
        out["operation"] = op
    elif kind == TEXT_SIMILARITY:
        out["input"] = _string(crit, "input", param, template=True)
        out["reference"] = _string(crit, "reference", param, template=True)
        metric = crit.get("evaluation_metric")
        if metric in REFUSED_METRICS:
            raise _bad(f"{param}.evaluation_metric", f"{param}.evaluation_metric {metric!r} is not supported: "
                       f"{REFUSED_METRICS[metric]} (supported: {', '.join(METRICS)})", "unsupported_metric")
        if metric not in METRICS:
            raise _bad(f"{param}.evaluation_metric",
                       f"{param}.evaluation_metric must be one of {', '.join(METRICS)}, got {metric!r}")
        out["evaluation_metric"] = metric
        if crit.get("pass_threshold") is None:
            raise _bad(f"{param}.pass_threshold", f"{param}.pass_threshold is required for text_similarity")
        threshold = _number(crit["pass_threshold"], f"{param}.pass_threshold")
        if not 0 <= threshold <= 1:
            raise _bad(f"{param}.pass_threshold", f"{param}.pass_threshold must be within 0..1, got {threshold}")
        out["pass_threshold"] = threshold
    elif kind in (SCORE_MODEL, LABEL_MODEL):
        out["input"] = _messages(crit, param)
        out["model"] = _model(crit, param)
        if kind == SCORE_MODEL:
            bounds = crit.get("range", [0, 1])
            if not isinstance(bounds, list | tuple) or len(bounds) != 2:
                raise _bad(f"{param}.range", f"{param}.range must be two numbers [min, max]")
            low, high = (_number(b, f"{param}.range[{i}]") for i, b in enumerate(bounds))
            if not low < high:
                raise _bad(f"{param}.range", f"{param}.range must have min < max, got [{low}, {high}]")
            out["range"] = [low, high]
            threshold = (low + high) / 2 if crit.get("pass_threshold") is None else _number(
                crit["pass_threshold"], f"{param}.pass_threshold")
            if not low <= threshold <= high:
                raise _bad(f"{param}.pass_threshold",
                           f"{param}.pass_threshold {threshold} lies outside range [{low}, {high}]")
            out["pass_threshold"] = threshold
        else:
            labels = crit.get("labels")
            if (not isinstance(labels, list) or not labels
                    or not all(isinstance(label, str) and label for label in labels)):
                raise _bad(f"{param}.labels", f"{param}.labels must be a non-empty list of non-empty strings")
            if len(set(labels)) != len(labels):
                raise _bad(f"{param}.labels", f"{param}.labels has duplicates")
            passing = crit.get("passing_labels")
            if not isinstance(passing, list) or not passing or not all(isinstance(label, str) for label in passing):
                raise _bad(f"{param}.passing_labels", f"{param}.passing_labels must be a non-empty list of strings")
            strangers = [label for label in passing if label not in labels]
            if strangers:
                raise _bad(f"{param}.passing_labels",
                           f"{param}.passing_labels must be a subset of labels; {strangers[0]!r} is not a label")
            out["labels"] = list(labels)
            out["passing_labels"] = list(dict.fromkeys(passing))
        sampling = _sampling_params(crit, param)
        if sampling is not None:
            out["sampling_params"] = sampling
    else:  # JSON_CHECK
        out["input"] = _string(crit, "input", param, template=True, default="{{sample.output_text}}")
        schema = crit.get("schema")
        if schema is not None:
            _schema_validator(schema, f"{param}.schema")
            out["schema"] = json.loads(json.dumps(schema))
    return out


def _validate_plugin(kind: str, crit: Mapping[str, Any], param: str) -> dict[str, Any]:
    try:
        plugin = plugins.grader(kind)
    except NotFound:
        refused = REFUSED_TYPES.get(kind)
        if refused is not None:
            raise _bad(f"{param}.type", f"{param}.type {kind!r} is not supported: {refused}",
                       "unsupported_grader") from None
        installed = sorted(plugins.graders())
        raise _bad(f"{param}.type", f"{param}.type {kind!r} is not a known grader (built in: "
                   f"{', '.join(BUILTIN_TYPES)}; plug-ins: {', '.join(installed) or 'none'})",
                   "unknown_grader") from None
    try:
        checked = plugin.validate(crit)
    except InvalidArgument as err:
        sub = f"{param}.{err.param}" if err.param else param
        raise _bad(sub, f"{param}: {err.message}", err.code or "invalid_testing_criteria") from err
    except ValueError as err:  # a plug-in that does not import CoachForge raises ValueError (with .param)
        sub_param = getattr(err, "param", None)
        sub = f"{param}.{sub_param}" if sub_param else param
        raise _bad(sub, f"{param}: {err}") from err
    if not isinstance(checked, Mapping):
        raise _bad(param, f"{param}: the {kind} grader plug-in returned no criterion")
    return {k: v for k, v in checked.items() if k not in _COMMON_KEYS}


def _validate_one(crit: Any, param: str) -> tuple[str, dict[str, Any]]:
    """``(type, checked fields without type and name)``."""
    if not isinstance(crit, Mapping):
        raise _bad(param, f"{param} must be an object")
    kind = crit.get("type")
    if not isinstance(kind, str) or not kind:
        raise _bad(f"{param}.type", f"{param}.type is required")
    name = crit.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise _bad(f"{param}.name", f"{param}.name must be a non-empty string")
    if kind in BUILTIN_TYPES:
        return kind, _validate_builtin(kind, crit, param)
    return kind, _validate_plugin(kind, crit, param)


def validate_criteria(criteria: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check an eval's ``testing_criteria`` and return them normalised.

    Normalised: fresh dicts starting with ``type`` and ``name``, fields set to ``null`` dropped,
    numbers as floats, defaults filled in (``name``: the type, made unique with ``_2``, ``_3``…;
    ``score_model``'s ``range`` ``[0, 1]`` and ``pass_threshold`` the middle of the range;
    ``json_check``'s ``input`` ``{{sample.output_text}}``).  Validating the result again gives the
    same result.  Raises :class:`InvalidArgument` whose ``param`` names the offending field, e.g.
    ``testing_criteria[2].operation``.
    """
    if not isinstance(criteria, list) or not criteria:
        raise _bad("testing_criteria", "testing_criteria must be a non-empty list of graders")
    checked: list[tuple[str, str | None, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for i, crit in enumerate(criteria):
        param = f"testing_criteria[{i}]"
        kind, fields = _validate_one(crit, param)
        name = crit.get("name")
        if name is not None:
            if name in seen:
                raise _bad(f"{param}.name", f"{param}.name {name!r} is already the name of testing_criteria"
                           f"[{seen[name]}]; names must be unique", "duplicate_name")
            seen[name] = i
        checked.append((kind, name, fields))
    out: list[dict[str, Any]] = []
    taken = set(seen)
    for kind, name, fields in checked:
        if name is None:
            name, n = kind, 1
            while name in taken:
                n += 1
                name = f"{kind}_{n}"
            taken.add(name)
        out.append({"type": kind, "name": name, **fields})
    return out


# --------------------------------------------------------------------------- metrics


def _fuzzy(hyp: str, ref: str) -> float:
    from rapidfuzz import fuzz, utils

    return float(fuzz.WRatio(hyp, ref, processor=utils.default_process)) / 100.0


@lru_cache(maxsize=1)
def _bleu_metric() -> Any:
    from sacrebleu.metrics.bleu import BLEU

    return BLEU(effective_order=True)


def _bleu(hyp: str, ref: str) -> float:
    return float(_bleu_metric().sentence_score(hyp, [ref]).score) / 100.0


@lru_cache(maxsize=1)
def _tokenizer_13a() -> Callable[[str], str]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenizer: Callable[[str], str] = Tokenizer13a()  # type: ignore[no-untyped-call]
    return tokenizer


def _gleu(hyp: str, ref: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    tokenize = _tokenizer_13a()
    return float(sentence_gleu([tokenize(ref).split()], tokenize(hyp).split()))


@lru_cache(maxsize=8)
def _rouge_scorer(rouge_type: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([rouge_type])


def _rouge(metric: str) -> Callable[[str, str], float]:
    rouge_type = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]

    def score(hyp: str, ref: str) -> float:
        return float(_rouge_scorer(rouge_type).score(ref, hyp)[rouge_type].fmeasure)

    return score


def _metric(name: str) -> Callable[[str, str], float]:
    if name == "fuzzy_match":
        return _fuzzy
    if name == "bleu":
        return _bleu
    if name == "gleu":
        return _gleu
    return _rouge(name)


# --------------------------------------------------------------------------- JSON (Schema)


def _schema_validator(schema: Any, param: str) -> Any:
    """A compiled validator of ``schema``; :class:`InvalidArgument` (``param``) when it is no JSON Schema."""
    from jsonschema import exceptions, validators

    if not isinstance(schema, Mapping | bool):
        raise _bad(param, f"{param} must be a JSON Schema (an object)", "invalid_schema")
    try:
        cls = validators.validator_for(schema)
        cls.check_schema(schema)
        return cls(schema)
    except exceptions.SchemaError as err:
        where = "/".join(str(p) for p in err.path)
        raise _bad(param, f"{param} is not a valid JSON Schema: {err.message}" + (f" (at {where})" if where else ""),
                   "invalid_schema") from err
    except Exception as err:  # e.g. an unresolvable $ref
        raise _bad(param, f"{param} is not a valid JSON Schema: {err}", "invalid_schema") from err


def _strip_fence(text: str) -> str:
    body = text.strip()
    if body.startswith("```"):
        newline = body.find("\n")
        body = body[newline + 1:] if newline >= 0 else body[3:]
        if body.rstrip().endswith("```"):
            body = body.rstrip()[:-3]
    return body.strip()


# --------------------------------------------------------------------------- prepared criteria


_STEPS_SCHEMA: Final = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"description": {"type": "string"}, "conclusion": {"type": "string"}},
        "required": ["description", "conclusion"],
        "additionalProperties": False,
    },
}


def _response_format(name: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": {
        "type": "object", "properties": {"steps": _STEPS_SCHEMA, "result": result},
        "required": ["steps", "result"], "additionalProperties": False}}}


@dataclass(frozen=True)
class _Prepared:
    """A criterion ready to grade: templates compiled, metric and validator looked up."""

    name: str
    type: str
    fn: Callable[[_Prepared, Mapping[str, Any], Mapping[str, Any], Judge | None], GradeResult]
    crit: Mapping[str, Any]
    input: tuple[_Part, ...] = ()
    reference: tuple[_Part, ...] = ()
    operation: str = ""
    metric: Callable[[str, str], float] | None = None
    metric_name: str = ""
    threshold: float = 0.0
    bounds: tuple[float, float] = (0.0, 1.0)
    messages: tuple[tuple[str, tuple[tuple[_Part, ...], ...]], ...] = ()
    model: str = ""
    labels: tuple[str, ...] = ()
    passing: frozenset[str] = frozenset()
    sampling: dict[str, Any] = field(default_factory=dict)
    response_format: dict[str, Any] = field(default_factory=dict)
    validator: Any = None


def _ok(p: _Prepared, score: float, passed: bool, detail: dict[str, Any] | None = None) -> GradeResult:
    return GradeResult(name=p.name, type=p.type, score=score, passed=passed, detail=detail)


def _string_check(p: _Prepared, item: Mapping[str, Any], sample: Mapping[str, Any], judge: Judge | None) -> GradeResult:
    got, ref = _render(p.input, item, sample), _render(p.reference, item, sample)
    op = p.operation
    if op == "eq":
        hit = got == ref
    elif op == "ne":
        hit = got != ref
    elif op == "like":
        hit = ref in got
    else:
        hit = ref.lower() in got.lower()
    return _ok(p, 1.0 if hit else 0.0, hit)


def _text_similarity(p: _Prepared, item: Mapping[str, Any], sample: Mapping[str, Any],
                     judge: Judge | None) -> GradeResult:
    assert p.metric is not None
    score = min(1.0, max(0.0, p.metric(_render(p.input, item, sample), _render(p.reference, item, sample))))
    return _ok(p, score, score >= p.threshold, {"evaluation_metric": p.metric_name})


def _json_check(p: _Prepared, item: Mapping[str, Any], sample: Mapping[str, Any], judge: Judge | None) -> GradeResult:
    text = _render(p.input, item, sample)
    try:
        value = json.loads(text)
    except ValueError as err:
        return _ok(p, 0.0, False, {"valid_json": False, "reason": f"not JSON: {err}"})
    if p.validator is None:
        return _ok(p, 1.0, True, {"valid_json": True})
    if p.validator.is_valid(value):
        return _ok(p, 1.0, True, {"valid_json": True, "schema_valid": True})
    from jsonschema.exceptions import best_match

    error = best_match(p.validator.iter_errors(value))
    where = "/".join(str(part) for part in error.absolute_path) if error is not None else ""
    reason = f"does not match the schema: {error.message if error is not None else 'invalid'}"
    return _ok(p, 0.0, False, {"valid_json": True, "schema_valid": False,
                               "reason": reason + (f" (at /{where})" if where else "")})


def _judge_params(sampling: Mapping[str, Any]) -> dict[str, Any]:
    """A criterion's ``sampling_params`` (OpenAI's grader names) as the judge request's parameters:
    OpenAI spells the token limit ``max_completions_tokens`` here; ``reasoning_effort`` means
    nothing to the platform's engines and is not sent."""
    out = {k: v for k, v in sampling.items() if k not in ("max_completions_tokens", "reasoning_effort")}
    if "max_completions_tokens" in sampling:
        out["max_completion_tokens"] = sampling["max_completions_tokens"]
    return out


def _ask(p: _Prepared, item: Mapping[str, Any], sample: Mapping[str, Any], judge: Judge | None) -> dict[str, Any]:
    """The judge's verdict as a dict with ``steps`` and ``result``; ValueError when it answered none."""
    if judge is None:
        raise ValueError(f"{p.type} needs a judge model, and none was given")
    messages = [{"role": "system" if role == "developer" else role,
                 "content": "\n".join(_render(parts, item, sample) for parts in contents)}
                for role, contents in p.messages]
    answer = judge(p.model, messages, p.response_format, _judge_params(p.sampling))
    if not isinstance(answer, str):
        raise ValueError(f"the judge returned {type(answer).__name__}, not text")
    try:
        verdict = json.loads(_strip_fence(answer))
    except ValueError:
        raise ValueError(f"the judge's answer is not JSON: {answer[:200]!r}") from None
    if not isinstance(verdict, dict) or "result" not in verdict:
        raise ValueError(f"the judge's answer has no result: {answer[:200]!r}")
    return verdict


def _steps(verdict: Mapping[str, Any]) -> list[Any]:
    steps = verdict.get("steps")
    return steps if isinstance(steps, list) else []


def _score_model(p: _Prepared, item: Mapping[str, Any], sample: Mapping[str, Any], judge: Judge | None) -> GradeResult:
    verdict = _ask(p, item, sample, judge)
    raw = verdict["result"]
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            pass
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ValueError(f"the judge's result is not a number: {verdict['result']!r}")
    low, high = p.bounds
    score = min(high, max(low, float(raw)))
    detail: dict[str, Any] = {"result": raw, "steps": _steps(verdict)}
    if score != raw:
        detail["clamped_to_range"] = [low, high]
    return _ok(p, score, score >= p.threshold, detail)


def _label_model(p: _Prepared, item: Mapping[str, Any], sample: Mapping[str, Any], judge: Judge | None) -> GradeResult:
    verdict = _ask(p, item, sample, judge)
    label = verdict["result"]
    if not isinstance(label, str) or label not in p.labels:
        raise ValueError(f"the judge's label {label!r} is not one of {list(p.labels)}")
    passed = label in p.passing
    return _ok(p, 1.0 if passed else 0.0, passed, {"label": label, "steps": _steps(verdict)})


def _plugin(p: _Prepared, item: Mapping[str, Any], sample: Mapping[str, Any], judge: Judge | None) -> GradeResult:
    outcome = plugins.grader(p.type).grade(p.crit, item, sample)
    if not isinstance(outcome, tuple) or len(outcome) != 3:
        raise ValueError(f"the {p.type} grader plug-in returned {outcome!r}, not (score, passed, detail)")
    score, passed, detail = outcome
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise ValueError(f"the {p.type} grader plug-in returned the score {score!r}")
    if not isinstance(passed, bool):
        raise ValueError(f"the {p.type} grader plug-in returned passed={passed!r}, not a bool")
    return _ok(p, float(score), passed, dict(detail) if isinstance(detail, Mapping) else None)


def _prepare(criterion: Mapping[str, Any]) -> _Prepared:
    kind, fields = _validate_one(criterion, "criterion")
    crit = {"type": kind, "name": criterion.get("name") or kind, **fields}
    common: dict[str, Any] = {"name": crit["name"], "type": kind, "crit": crit}
    if kind == STRING_CHECK:
        return _Prepared(fn=_string_check, input=compile_template(crit["input"]),
                         reference=compile_template(crit["reference"]), operation=crit["operation"], **common)
    if kind == TEXT_SIMILARITY:
        return _Prepared(fn=_text_similarity, input=compile_template(crit["input"]),
                         reference=compile_template(crit["reference"]), metric=_metric(crit["evaluation_metric"]),
                         metric_name=crit["evaluation_metric"], threshold=crit["pass_threshold"], **common)
    if kind == JSON_CHECK:
        validator = _schema_validator(crit["schema"], "schema") if "schema" in crit else None
        return _Prepared(fn=_json_check, input=compile_template(crit["input"]), validator=validator, **common)
    if kind in (SCORE_MODEL, LABEL_MODEL):
        messages = tuple((m["role"], tuple(compile_template(t) for t in _content_texts(m["content"], "content")))
                         for m in crit["input"])
        shared = {"messages": messages, "model": crit["model"], "sampling": crit.get("sampling_params", {}), **common}
        if kind == SCORE_MODEL:
            low, high = crit["range"]
            return _Prepared(fn=_score_model, bounds=(low, high), threshold=crit["pass_threshold"],
                             response_format=_response_format("score_model_grader", {"type": "number"}), **shared)
        return _Prepared(fn=_label_model, labels=tuple(crit["labels"]), passing=frozenset(crit["passing_labels"]),
                         response_format=_response_format("label_model_grader",
                                                          {"type": "string", "enum": list(crit["labels"])}),
                         **shared)
    return _Prepared(fn=_plugin, **common)


_PREPARED_MAX: Final = 256
_BY_ID: OrderedDict[int, tuple[Mapping[str, Any], _Prepared]] = OrderedDict()
_BY_TEXT: OrderedDict[str, _Prepared] = OrderedDict()
_CACHE_LOCK: Final = threading.Lock()


def _prepared(criterion: Mapping[str, Any]) -> _Prepared:
    """The prepared form of ``criterion`` (treat criteria as immutable once graded).

    Cached by the criterion object (the runner grades every item with the same dicts) and, for a
    criterion that comes as a new but equal object (e.g. read from the database again), by its JSON.
    """
    key = id(criterion)
    hit = _BY_ID.get(key)
    if hit is not None and hit[0] is criterion:
        return hit[1]
    try:
        text: str | None = json.dumps(criterion, sort_keys=True)
    except (TypeError, ValueError):
        text = None
    prepared = _BY_TEXT.get(text) if text is not None else None
    if prepared is None:
        prepared = _prepare(criterion)
    with _CACHE_LOCK:
        _BY_ID[key] = (criterion, prepared)  # holding the criterion keeps its id from being reused
        while len(_BY_ID) > _PREPARED_MAX:
            _BY_ID.popitem(last=False)
        if text is not None:
            _BY_TEXT[text] = prepared
            while len(_BY_TEXT) > _PREPARED_MAX:
                _BY_TEXT.popitem(last=False)
    return prepared


def _errored(criterion: Any, message: str) -> GradeResult:
    crit = criterion if isinstance(criterion, Mapping) else {}
    kind = crit.get("type")
    kind = kind if isinstance(kind, str) else "unknown"
    name = crit.get("name")
    return GradeResult(name=name if isinstance(name, str) and name else kind, type=kind, score=None, passed=None,
                       error=message)


def grade(criterion: dict[str, Any], item: dict[str, Any], sample: dict[str, Any], judge: Judge | None) -> GradeResult:
    """Grade one item's sample by one criterion (best a validated one).

    Never raises: a criterion that does not validate, a judge that fails or answers nonsense, a
    plug-in that raises — each gives an errored result (``score`` and ``passed`` ``None``, ``error``
    says why).  A wrong or malformed *answer* is not an error: it fails (score 0).
    """
    try:
        prepared = _prepared(criterion)
    except InvalidArgument as err:
        return _errored(criterion, f"invalid criterion: {err.message}")
    except Exception as err:  # a plug-in's validate, …
        return _errored(criterion, f"invalid criterion: {type(err).__name__}: {err}")
    try:
        return prepared.fn(prepared, item, sample, judge)
    except Exception as err:
        return GradeResult(name=prepared.name, type=prepared.type, score=None, passed=None,
                           error=str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}")


__all__ = ["BUILTIN_TYPES", "GradeResult", "Judge", "TemplateError", "compile_template", "grade", "render",
           "validate_criteria"]
