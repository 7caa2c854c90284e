"""Deterministic train/validation split by conversation.

Every example belongs to a group: its ``conversation_id`` when it has one, otherwise its own
content hash.  A group goes to validation when ``sha256(f"{seed}:{group_key}")``, read as a
fraction in [0, 1), is below ``validation_fraction``.  The decision depends only on the seed
and the group key, so a conversation never straddles the split and reordering the input does
not change which examples land where (each side keeps the input order).
"""

from __future__ import annotations

import hashlib
from typing import Final

from .clean import content_hash
from .formats import Example

DEFAULT_VALIDATION_FRACTION: Final = 0.1


def group_key(example: Example) -> str:
    """``conv:<conversation_id>``, or ``hash:<content hash>`` for examples without an id."""
    if example.conversation_id is not None:
        return f"conv:{example.conversation_id}"
    return f"hash:{content_hash(example)}"


def bucket(seed: int, key: str) -> float:
    """A stable pseudo-random number in [0, 1) for (seed, group key)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_validation(example: Example, validation_fraction: float, seed: int) -> bool:
    """Whether the example's group goes to the validation set."""
    return bucket(seed, group_key(example)) < validation_fraction


def split_examples(
    examples: list[Example], validation_fraction: float = DEFAULT_VALIDATION_FRACTION, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Return ``(train, validation)``; the expected validation share is ``validation_fraction``."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError("validation_fraction must be in [0, 1)")
    train: list[Example] = []
    validation: list[Example] = []
    for ex in examples:
        (validation if is_validation(ex, validation_fraction, seed) else train).append(ex)
    return train, validation
