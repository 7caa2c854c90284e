"""Preparing another base model for the all-in-one stack: a Hugging Face folder is copied in under
its id (hard links, nothing rewritten), once; a changed source is prepared again; bad ids and sources
are refused; the stack's programs get one engine per extra base and the pools and base list naming it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coachforge_launcher.models import BASE_MODEL_ID, MARKER_NAME, prepare_extra_base
from coachforge_launcher.settings import StackSettings
from coachforge_launcher.stack import Prepared, extra_engine_ports, supervisor_config
from coachforge_shared.settings import PlatformSettings


def test_a_folder_is_copied_in_once_and_again_when_it_changes(tmp_path: Path, base_model_dir: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (source / name).write_bytes((base_model_dir / name).read_bytes())
    cache = tmp_path / "models"
    target = prepare_extra_base(cache, "coach-b", source, progress=False)
    assert target == cache / "coach-b" and (target / MARKER_NAME).is_file()
    assert (target / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert os.stat(target / "config.json").st_ino == os.stat(source / "config.json").st_ino  # hard link
    marker = (target / MARKER_NAME).stat().st_mtime_ns
    assert prepare_extra_base(cache, "coach-b", source, progress=False) == target
    assert (target / MARKER_NAME).stat().st_mtime_ns == marker  # nothing done the second time
    (source / "extra.txt").write_text("changed")
    prepare_extra_base(cache, "coach-b", source, progress=False)
    assert (target / "extra.txt").read_text() == "changed"


@pytest.mark.parametrize("model_id", ["", "../x", ".hidden", "a/b", BASE_MODEL_ID])
def test_bad_ids_are_refused(tmp_path: Path, base_model_dir: Path, model_id: str) -> None:
    with pytest.raises(ValueError, match="base model id"):
        prepare_extra_base(tmp_path, model_id, base_model_dir, progress=False)


def test_a_source_that_is_no_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    for source in (tmp_path / "empty", tmp_path / "weights.bin", tmp_path / "missing"):
        with pytest.raises(ValueError):
            prepare_extra_base(tmp_path / "models", "coach-b", source, progress=False)


def test_each_extra_base_gets_its_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = StackSettings(engine_port=8100, extra_engine_port=8110,
                          extra_base_models={"coach-b": "/m/b", "coach-c": "/m/c.gguf"})
    assert extra_engine_ports(stack) == {"coach-b": 8110, "coach-c": 8111}
    platform = PlatformSettings(data_dir=tmp_path)
    prepared = Prepared(api_key="k", key_created=False, model_dir=Path("/models/base"), env={},
                        engine_api_key="e", extra_model_dirs={"coach-b": Path("/models/coach-b"),
                                                              "coach-c": Path("/models/coach-c")})
    conf = supervisor_config(platform, stack, prepared, console=False).read_text()
    assert "[program:engine]" in conf and "[program:engine-coach-b]" in conf and "[program:engine-coach-c]" in conf
    section = conf.split("[program:engine-coach-c]")[1].split("[program:")[0]
    assert "--served-model-name coach-c" in section and "--port 8111" in section and "/models/coach-c" in section
    # the programs read the stack settings back from the environment the stack gives them
    monkeypatch.setenv("COACHFORGE_STACK_EXTRA_BASE_MODELS", json.dumps(stack.extra_base_models))
    assert StackSettings().extra_base_models == {"coach-b": "/m/b", "coach-c": "/m/c.gguf"}
