# TEMPORARY (written by the sft/models helper for its own test runs; replace with the real root conftest).
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (_ROOT, _ROOT / "launcher", _ROOT / "services" / "trainer"):
    sys.path.insert(0, str(_p))

pytest_plugins = ["tests.fixtures_models"]
