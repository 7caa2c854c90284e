"""``coachforge tenants`` and ``coachforge keys`` on the platform's database, a short
``COACHFORGE_API_KEY`` refused with a clear message, and the all-in-one's engine key given to the
engine and the services process only (never on a command line, in a file only its owner reads)."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from coachforge_launcher.cli import main
from coachforge_launcher.settings import StackSettings
from coachforge_launcher.stack import Prepared, supervisor_config
from coachforge_shared.auth import KEY_PREFIX, Authenticator, list_api_keys
from coachforge_shared.db import Database
from coachforge_shared.errors import Unauthenticated
from coachforge_shared.settings import PlatformSettings


@pytest.fixture
def platform_db(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    """The migrated test database, as the CLI finds it (COACHFORGE_DATABASE_URL)."""
    monkeypatch.setenv("COACHFORGE_DATABASE_URL", str(db.engine.url))
    monkeypatch.setenv("COACHFORGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("COACHFORGE_API_KEY", raising=False)
    return db


def test_tenants_and_keys_from_the_command_line(platform_db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tenants", "create", "acme", "--display-name", "Acme Inc."]) == 0
    assert capsys.readouterr().out.strip() == "acme"
    assert main(["tenants", "create", "acme"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["tenants", "create", "Not/A/Tenant"]) == 1
    assert "tenant id" in capsys.readouterr().err
    assert main(["tenants", "list"]) == 0
    assert "Acme Inc." in capsys.readouterr().out

    assert main(["keys", "create", "--tenant", "acme", "--name", "ci", "--scopes", "read"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith(KEY_PREFIX) and len(key) >= 32 + len(KEY_PREFIX) and "shown this once" in out.err
    assert main(["keys", "create", "--tenant", "nobody"]) == 1
    assert "No tenant 'nobody'" in capsys.readouterr().err
    assert main(["keys", "create", "--tenant", "acme", "--scopes", "read,root"]) == 1
    assert "Unknown scope" in capsys.readouterr().err

    auth = Authenticator(platform_db, "internal", key_cache_s=0)
    assert auth.authenticate(f"Bearer {key}", None, None).scopes == {"read"}
    assert main(["keys", "list", "--tenant", "acme"]) == 0
    listing = capsys.readouterr().out
    assert "ci" in listing and key[:10] in listing and key not in listing  # the key itself is never shown again
    (row,) = list_api_keys(platform_db, "acme")
    assert main(["keys", "revoke", row["id"]]) == 0
    assert "revoked" in capsys.readouterr().out
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {key}", None, None)
    assert main(["keys", "revoke", "key-nope"]) == 1
    assert "No API key" in capsys.readouterr().err


def test_a_short_api_key_is_refused_with_a_clear_message(platform_db: Database, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COACHFORGE_API_KEY", "cf-test-0123456789abcdef")
    assert main(["tenants", "list"]) == 2
    err = capsys.readouterr().err
    assert "COACHFORGE_API_KEY must be at least 32" in err and "Traceback" not in err


def test_only_the_engine_and_the_services_process_hold_the_engine_key(tmp_path: Path) -> None:
    platform = PlatformSettings(data_dir=tmp_path, database_url="sqlite://", kafka_bootstrap="127.0.0.1:1")
    engine_key = "engine-key-0123456789abcdefghijklmnopqrstu"
    prepared = Prepared(api_key="cf-sk-" + "a" * 43, key_created=False, model_dir=tmp_path / "model", env={},
                        engine_api_key=engine_key)
    conf = supervisor_config(platform, StackSettings(trainer_workers=2), prepared, console=False)
    assert conf.stat().st_mode & 0o777 == 0o600
    parser = configparser.RawConfigParser()
    parser.read(conf)
    environment = {name.removeprefix("program:"): parser[name].get("environment", "")
                   for name in parser.sections() if name.startswith("program:")}
    assert environment["engine"] == f'VLLM_API_KEY="{engine_key}"'
    assert environment["services"] == f'COACHFORGE_INFERENCE_ENGINE_API_KEY="{engine_key}"'
    assert environment["trainer-worker"] == ""
    assert all(engine_key not in parser[name]["command"] for name in parser.sections() if name.startswith("program:"))
    assert "--api-key" not in conf.read_text()
