"""The chart's trainer.remotes: the Secret with the tenants' remote fine-tuning APIs (backend
openai_compatible) is mounted as a folder (no subPath, so edits reach running pods) into the trainer
and the trainer workers, with COACHFORGE_TRAINER_REMOTES_FILE naming the file in it, and into
inference (which serves external models through those remotes), with COACHFORGE_INFERENCE_REMOTES_FILE
naming the same file; without a Secret nothing is mounted and no pod names a remotes file."""

from __future__ import annotations

from typing import Any

from deploy_helpers import VALUES_DIR, render

REMOTES_FILE = "/etc/coachforge/trainer-remotes/remotes.json"


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_the_remotes_secret_is_mounted_into_the_trainer_and_its_workers(helm_env: dict[str, str]) -> None:
    pods = _pods(render(helm_env, "-f", str(VALUES_DIR / "external.yaml")))
    holders = {name for name, pod in pods.items()
               if any(_env(c).get("COACHFORGE_TRAINER_REMOTES_FILE") for c in pod["containers"])}
    assert holders == {"coachforge-trainer", "coachforge-trainer-worker"}
    for name in holders:
        pod = pods[name]
        volume = next(v for v in pod["volumes"] if v["name"] == "trainer-remotes")
        assert volume["secret"]["secretName"] == "coachforge-trainer-remotes"
        assert volume["secret"]["items"] == [{"key": "remotes.json", "path": "remotes.json"}]
        container = pod["containers"][0]
        assert _env(container)["COACHFORGE_TRAINER_REMOTES_FILE"] == REMOTES_FILE
        mount = next(m for m in container["volumeMounts"] if m["name"] == "trainer-remotes")
        assert mount == {"name": "trainer-remotes", "mountPath": REMOTES_FILE.rsplit("/", 1)[0], "readOnly": True}
        assert "subPath" not in mount


def test_the_remotes_secret_is_mounted_into_inference_for_external_models(helm_env: dict[str, str]) -> None:
    pods = _pods(render(helm_env, "-f", str(VALUES_DIR / "external.yaml")))
    holders = {name for name, pod in pods.items()
               if any(_env(c).get("COACHFORGE_INFERENCE_REMOTES_FILE") for c in pod["containers"])}
    assert holders == {"coachforge-inference"}
    pod = pods["coachforge-inference"]
    volume = next(v for v in pod["volumes"] if v["name"] == "trainer-remotes")
    assert volume["secret"]["secretName"] == "coachforge-trainer-remotes"
    assert volume["secret"]["items"] == [{"key": "remotes.json", "path": "remotes.json"}]
    container = pod["containers"][0]
    assert _env(container)["COACHFORGE_INFERENCE_REMOTES_FILE"] == REMOTES_FILE
    assert "COACHFORGE_TRAINER_REMOTES_FILE" not in _env(container)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "trainer-remotes")
    assert mount == {"name": "trainer-remotes", "mountPath": REMOTES_FILE.rsplit("/", 1)[0], "readOnly": True}


def test_without_a_secret_nothing_is_mounted(helm_env: dict[str, str]) -> None:
    for name, pod in _pods(render(helm_env)).items():
        assert all(v["name"] != "trainer-remotes" for v in pod.get("volumes", [])), name
        assert all("COACHFORGE_TRAINER_REMOTES_FILE" not in _env(c) for c in pod["containers"]), name
        assert all("COACHFORGE_INFERENCE_REMOTES_FILE" not in _env(c) for c in pod["containers"]), name
