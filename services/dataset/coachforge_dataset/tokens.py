"""Token counting with the base model's own tokenizer (``tokenizer.json`` of the prepared model)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

from coachforge_shared.errors import InvalidArgument


@lru_cache(maxsize=8)
def _tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def token_counter(models_dir: Path, base_model: str) -> Callable[[str], int]:
    """A function counting the tokens of a text as ``base_model`` sees them (no special tokens)."""
    path = models_dir / base_model / "tokenizer.json"
    if not path.exists():
        raise InvalidArgument(f"No tokenizer for base model {base_model!r} (looked for {path}).", param="model")
    tokenizer = _tokenizer(path)

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count
