"""Token counting with the base model's own tokenizer (``tokenizer.json`` of the prepared model),
and the token-length check the trainer runs when a job is created."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from coachforge_dataset.pipeline import Example, LineIssue
from coachforge_dataset.pipeline.preference import OUTPUT_FIELDS, Preference
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.redact import plain_name


@lru_cache(maxsize=8)
def _tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


@lru_cache(maxsize=8)
def _chat_template(model_dir: Path) -> Any:
    """The model's chat template compiled with Jinja2 (as transformers renders it), or None."""
    config = model_dir / "tokenizer_config.json"
    if not config.exists():
        return None
    template = json.loads(config.read_text()).get("chat_template")
    if not isinstance(template, str):
        return None
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


@dataclass(frozen=True)
class TokenCounter:
    """Counts the tokens of a text as ``base_model`` sees them (no special tokens). Picklable: the
    tokenizer is loaded from ``path`` where it is used (in the pipeline's worker processes too)."""

    path: Path

    def __call__(self, text: str) -> int:
        return len(_tokenizer(self.path).encode(text, add_special_tokens=False).ids)


def tokenizer_path(models_dir: Path, base_model: str) -> Path:
    """The tokenizer of ``base_model``, one of the prepared models (a folder of ``models_dir``):
    a name that is not one plain folder name (a path, '..') is refused before it is joined to the
    folder, and the error lists the prepared models, never where they lie."""
    path = models_dir / base_model / "tokenizer.json" if plain_name(base_model) else None
    if path is None or not path.is_file():
        known = sorted(p.name for p in models_dir.iterdir() if (p / "tokenizer.json").is_file()) \
            if models_dir.is_dir() else []
        raise InvalidArgument(f"No tokenizer for base model {base_model[:200]!r} (prepared base models: "
                              f"{', '.join(known) or 'none'}).", param="model")
    return path


def token_counter(models_dir: Path, base_model: str) -> TokenCounter:
    """A function counting the tokens of a text as ``base_model`` sees them (no special tokens)."""
    return TokenCounter(tokenizer_path(models_dir, base_model))


def conversation_tokens(models_dir: Path, base_model: str, example: Example) -> int:
    """Tokens of the whole conversation as the trainer feeds it to the model: rendered with the
    model's chat template (special tokens included); without a template, the turns' contents."""
    path = tokenizer_path(models_dir, base_model)
    template = _chat_template(path.parent)
    if template is None:
        return sum(TokenCounter(path)(m.content) for m in example.messages)
    text = template.render(messages=[{"role": m.role, "content": m.content} for m in example.messages],
                           add_generation_prompt=False, bos_token="", eos_token="")
    return len(_tokenizer(path).encode(text, add_special_tokens=False).ids)


@dataclass
class TokenCheck:
    """The result of :func:`check_tokens`."""

    max_length: int
    examples: int = 0
    over_limit: int = 0
    max_tokens: int = 0
    total_tokens: int = 0
    issues: list[LineIssue] = field(default_factory=list)

    def message(self) -> str:
        if not self.over_limit:
            return ""
        more = f" (and {self.over_limit - len(self.issues)} more)" if self.over_limit > len(self.issues) else ""
        return (f"{self.over_limit} of {self.examples} examples exceed max_length {self.max_length}: "
                + "; ".join(str(i) for i in self.issues) + more)


def check_tokens(models_dir: Path, base_model: str, examples: Iterator[tuple[int, str, Example | Preference]],
                 max_length: int, max_issues: int) -> TokenCheck:
    """Count each ``(line, field, example)``'s conversation tokens and report those over ``max_length``.
    A preference pair counts as its prompt with the longer of its two outputs (the longest sequence
    DPO trains on); its issue names that output's field."""
    if max_length <= 0:
        raise InvalidArgument("max_length must be a positive number of tokens.", param="max_length")
    tokenizer_path(models_dir, base_model)
    result = TokenCheck(max_length)
    for line, where, example in examples:
        if isinstance(example, Preference):
            n, where = max((conversation_tokens(models_dir, base_model, example.with_answer(name)), name)
                           for name in OUTPUT_FIELDS)
        else:
            n = conversation_tokens(models_dir, base_model, example)
        result.examples += 1
        result.total_tokens += n
        result.max_tokens = max(result.max_tokens, n)
        if n > max_length:
            result.over_limit += 1
            if len(result.issues) < max_issues:
                result.issues.append(LineIssue(line, where, f"{n} tokens, over max_length {max_length}"))
    return result
