"""Error texts shown to clients lose every server path: known folders become labels, any other
absolute path ``<path>``; URLs, ratios and relative names are left alone."""

from __future__ import annotations

from pathlib import Path

from coachforge_shared.redact import redact_paths


def test_known_folders_become_labels_and_other_paths_are_hidden(tmp_path: Path) -> None:
    models = tmp_path / "models"
    err = OSError(2, "No such file or directory", str(models / "SmolLM2" / "config.json"))
    shown = redact_paths(f"Training failed: {err}", {"models": models, "data": None})
    assert shown == "Training failed: [Errno 2] No such file or directory: '<models>/SmolLM2/config.json'"
    assert str(tmp_path) not in shown

    text = ("Can't load '/var/lib/coachforge/artifacts/acme/ftjob-1/adapter' (see /tmp/x.log); "
            "https://huggingface.co/docs/a/b says 3/4 of and/or ./relative/name")
    assert redact_paths(text) == ("Can't load '<path>' (see <path>); https://huggingface.co/docs/a/b says 3/4 of "
                                  "and/or ./relative/name")


def test_a_known_folder_is_replaced_only_as_a_whole_path_component(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert redact_paths(f"{data}base/x and {data}", {"data": data}) == "<path> and <data>"
