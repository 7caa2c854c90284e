"""The chart with several base models (``models.extra``): each base gets its download Job, its engines
(StatefulSet, headless Service, PodDisruptionBudget, NetworkPolicy, ServiceMonitor) named by a DNS-safe
form of its id, inference routes it to that pool (COACHFORGE_INFERENCE_ENGINE_POOLS), the registry
accepts it (COACHFORGE_REGISTRY_BASE_MODELS), and upgrades keep each download Job while its spec stays."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import CHART, MONITORING_API, VALUES_DIR, helm, render

Docs = list[dict[str, Any]]

SEVERAL = ("-f", str(VALUES_DIR / "several-bases.yaml"), *MONITORING_API)
CUSTOM_RESOURCES = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}

#: What several-bases.yaml asks for, per base model: the engines' name and component label, and their settings
#: (models.id's from engine; Qwen's its own; Mistral's left out, so engine's).
BASES: dict[str, dict[str, Any]] = {
    "Llama-3.1-8B-Instruct": {
        "name": "coachforge-engine", "component": "engine", "job": r"coachforge-model-download-[0-9a-f]{8}",
        "replicas": 2, "gpus": 1, "tensor_parallel": None, "max_loras": 8, "max_cpu_loras": 32, "rank": 16,
        "model_len": 8192, "source": "meta-llama/Llama-3.1-8B-Instruct", "revision": "main"},
    "Qwen2.5-32B-Instruct": {
        "name": "coachforge-engine-qwen2-5-32b-instruct", "component": "engine-qwen2-5-32b-instruct",
        "job": r"coachforge-model-download-qwen2-5-32b-instruct-[0-9a-f]{8}",
        "replicas": 2, "gpus": 4, "tensor_parallel": 2, "max_loras": 4, "max_cpu_loras": 12, "rank": 32,
        "model_len": 16384, "source": "Qwen/Qwen2.5-32B-Instruct", "revision": "main"},
    "Mistral-7B-Instruct-v0.3": {
        "name": "coachforge-engine-mistral-7b-instruct-v0-3", "component": "engine-mistral-7b-instruct-v0-3",
        "job": r"coachforge-model-download-mistral-7b-instruct-v0-3-[0-9a-f]{8}",
        "replicas": 2, "gpus": 1, "tensor_parallel": None, "max_loras": 8, "max_cpu_loras": 32, "rank": 16,
        "model_len": 8192, "source": "mistralai/Mistral-7B-Instruct-v0.3",
        "revision": "e0bc86c23ce5aae1db576c8cca6f06f1f73af2db"},
}


@pytest.fixture(scope="module")
def several(helm_env: dict[str, str]) -> Docs:
    return render(helm_env, *SEVERAL)


def by_kind(docs: Docs, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def engines(docs: Docs) -> dict[str, dict[str, Any]]:
    """Engine StatefulSets by the base model they serve (--served-model-name)."""
    found = {}
    for sts in by_kind(docs, "StatefulSet").values():
        args = sts["spec"]["template"]["spec"]["containers"][0].get("args", [])
        served = [a.removeprefix("--served-model-name=") for a in args if a.startswith("--served-model-name=")]
        if served:
            (base,) = served
            assert base not in found, f"two engine StatefulSets serve {base}"
            found[base] = sts
    return found


def download_jobs(docs: Docs) -> dict[str, dict[str, Any]]:
    """Model download Jobs by the base model they download (MODEL_ID)."""
    found = {}
    for job in by_kind(docs, "Job").values():
        if job["metadata"]["labels"]["app.kubernetes.io/component"] == "model-download":
            base = env_of(job["spec"]["template"]["spec"]["containers"][0])["MODEL_ID"]
            assert base not in found, f"two download Jobs for {base}"
            found[base] = job
    return found


def waited_for(pod: dict[str, Any]) -> list[str]:
    """The files the pod's wait-for-model init container waits for."""
    (wait,) = [c for c in pod.get("initContainers", []) if c["name"] == "wait-for-model"]
    return re.findall(r"\[ -f (\S+) \]", wait["args"][0])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def extra_entries(values_file: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = yaml.safe_load(values_file.read_text())["models"]["extra"]
    return entries


# -- engines -----------------------------------------------------------------------------------------------


def test_each_base_model_gets_engines_of_its_own_behind_a_headless_service(several: Docs) -> None:
    served = engines(several)
    assert served.keys() == BASES.keys()
    services = by_kind(several, "Service")
    pdbs = by_kind(several, "PodDisruptionBudget")
    for base, want in BASES.items():
        sts = served[base]
        assert sts["metadata"]["name"] == want["name"]
        assert sts["spec"]["replicas"] == want["replicas"]
        assert sts["spec"]["serviceName"] == want["name"]
        pod = sts["spec"]["template"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == want["component"]
        (container,) = pod["spec"]["containers"]
        args = container["args"]
        assert {f"--model=/models/{base}", f"--served-model-name={base}", "--enable-lora",
                f"--max-loras={want['max_loras']}", f"--max-cpu-loras={want['max_cpu_loras']}",
                f"--max-lora-rank={want['rank']}", f"--max-model-len={want['model_len']}",
                "--dtype=bfloat16"} <= set(args), (base, args)
        parallel = [a for a in args if a.startswith("--tensor-parallel-size")]
        assert parallel == ([f"--tensor-parallel-size={want['tensor_parallel']}"] if want["tensor_parallel"]
                            else []), base
        assert container["resources"]["limits"]["nvidia.com/gpu"] == want["gpus"], base
        # Each engine waits for its own base only.
        assert waited_for(pod["spec"]) == [f"/models/{base}/.coachforge-complete"], base

        service = services[want["name"]]
        assert service["spec"]["clusterIP"] == "None"
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000}
        # The Service finds this base's engines and no other's.
        chosen = [b for b, s in served.items() if selects(service["spec"]["selector"],
                                                           s["spec"]["template"]["metadata"]["labels"])]
        assert chosen == [base]
        assert pdbs[want["name"]]["spec"]["selector"] == sts["spec"]["selector"]

    qwen = served["Qwen2.5-32B-Instruct"]["spec"]["template"]["spec"]["containers"][0]
    assert "--pipeline-parallel-size=2" in qwen["args"]
    assert qwen["resources"] == {"requests": {"cpu": "16", "memory": "128Gi"},
                                 "limits": {"memory": "192Gi", "nvidia.com/gpu": 4}}
    # Fields an entry leaves out are engine's.
    main = served["Llama-3.1-8B-Instruct"]["spec"]["template"]["spec"]["containers"][0]
    mistral = served["Mistral-7B-Instruct-v0.3"]["spec"]["template"]["spec"]["containers"][0]
    assert mistral["resources"] == main["resources"]
    assert [a for a in mistral["args"] if "served-model-name" not in a and "--model=" not in a] == \
        [a for a in main["args"] if "served-model-name" not in a and "--model=" not in a]


def test_further_engines_run_like_the_main_one(several: Docs) -> None:
    """Same security context, probes, API key, volumes, environment and GPU placement as the main engine."""
    served = engines(several)
    main = served["Llama-3.1-8B-Instruct"]["spec"]["template"]["spec"]
    for base in ("Qwen2.5-32B-Instruct", "Mistral-7B-Instruct-v0.3"):
        pod = served[base]["spec"]["template"]["spec"]
        for key in ("securityContext", "serviceAccountName", "automountServiceAccountToken", "volumes",
                    "nodeSelector", "tolerations", "terminationGracePeriodSeconds"):
            assert pod[key] == main[key], (base, key)
        container, main_container = pod["containers"][0], main["containers"][0]
        for key in ("image", "securityContext", "startupProbe", "livenessProbe", "readinessProbe", "env",
                    "volumeMounts", "ports"):
            assert container[key] == main_container[key], (base, key)
        assert env_of(container)["VLLM_API_KEY"] == {"secretKeyRef": {"name": "coachforge-auth",
                                                                      "key": "engine-api-key"}}
        assert pod["initContainers"][0]["securityContext"] == main["initContainers"][0]["securityContext"]


# -- downloads ------------------------------------------------------------------------------------------------


def test_each_base_model_is_downloaded_into_the_same_cache_by_a_job_of_its_own(several: Docs) -> None:
    jobs = download_jobs(several)
    assert jobs.keys() == BASES.keys()
    main = jobs["Llama-3.1-8B-Instruct"]["spec"]["template"]["spec"]
    for base, want in BASES.items():
        job = jobs[base]
        assert re.fullmatch(want["job"], job["metadata"]["name"]), job["metadata"]["name"]
        assert len(job["metadata"]["name"]) <= 63
        pod = job["spec"]["template"]["spec"]
        env = env_of(pod["containers"][0])
        assert (env["MODEL_SOURCE"], env["MODEL_REVISION"]) == (want["source"], want["revision"]), base
        assert pod["volumes"] == main["volumes"], base  # the one model cache claim
        assert pod["containers"][0]["image"] == main["containers"][0]["image"], base
    qwen = jobs["Qwen2.5-32B-Instruct"]["spec"]["template"]["spec"]["containers"][0]
    assert "HF_TOKEN" not in env_of(qwen)  # its entry clears the token
    assert qwen["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    mistral = jobs["Mistral-7B-Instruct-v0.3"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(mistral)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}  # models.download's
    assert mistral["resources"] == main["containers"][0]["resources"]


def test_pods_that_use_any_base_wait_for_every_base(several: Docs) -> None:
    ready = [f"/models/{base}/.coachforge-complete" for base in BASES]
    waiting = {name: d for name, d in by_kind(several, "Deployment").items()
               if any(c["name"] == "wait-for-model" for c in d["spec"]["template"]["spec"].get("initContainers", []))}
    assert {"coachforge-trainer-worker", "coachforge-dataset", "coachforge-registry", "coachforge-coach"} <= \
        waiting.keys()
    for name, deployment in waiting.items():
        assert waited_for(deployment["spec"]["template"]["spec"]) == ready, name


def test_a_base_without_a_download_job_is_waited_for_by_its_config(helm_env: dict[str, str]) -> None:
    docs = render(helm_env, "--set", "models.extra[0].id=Local-Model",
                  "--set", "models.extra[0].download.enabled=false")
    assert download_jobs(docs).keys() == {"SmolLM2-135M-Instruct"}
    assert waited_for(engines(docs)["Local-Model"]["spec"]["template"]["spec"]) == ["/models/Local-Model/config.json"]


# -- routing ------------------------------------------------------------------------------------------------------


def test_inference_routes_each_base_to_its_pool_and_the_registry_accepts_every_base(
        several: Docs, monkeypatch: pytest.MonkeyPatch) -> None:
    from coachforge_inference.settings import InferenceSettings
    from coachforge_registry.settings import RegistrySettings
    from coachforge_trainer.settings import TrainerSettings

    deployments = by_kind(several, "Deployment")
    inference = env_of(deployments["coachforge-inference"]["spec"]["template"]["spec"]["containers"][0])
    pools = json.loads(inference["COACHFORGE_INFERENCE_ENGINE_POOLS"])
    assert pools == {"Qwen2.5-32B-Instruct": {"service": "coachforge-engine-qwen2-5-32b-instruct:8000"},
                     "Mistral-7B-Instruct-v0.3": {"service": "coachforge-engine-mistral-7b-instruct-v0-3:8000"}}
    assert inference["COACHFORGE_INFERENCE_ENGINE_SERVICE"] == "coachforge-engine:8000"  # the default pool
    services = by_kind(several, "Service")
    served = engines(several)
    for base, pool in pools.items():
        host, port = pool["service"].rsplit(":", 1)
        service = services[host]
        assert service["spec"]["clusterIP"] == "None"
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}
        assert [b for b, s in served.items() if selects(service["spec"]["selector"],
                                                         s["spec"]["template"]["metadata"]["labels"])] == [base]
    # One limit for every pool: the smallest (Qwen's 12 adapters; the main engine's rank 16).
    assert inference["COACHFORGE_INFERENCE_ENGINE_MAX_LORAS"] == "12"

    registry = env_of(deployments["coachforge-registry"]["spec"]["template"]["spec"]["containers"][0])
    assert json.loads(registry["COACHFORGE_REGISTRY_BASE_MODELS"]) == list(BASES)
    worker = env_of(deployments["coachforge-trainer-worker"]["spec"]["template"]["spec"]["containers"][0])
    assert worker["COACHFORGE_TRAINER_MAX_LORA_RANK"] == "16"
    # Dry-run estimates and presets assume the workers' device (GPUs by default).
    trainer = env_of(deployments["coachforge-trainer"]["spec"]["template"]["spec"]["containers"][0])
    assert trainer["COACHFORGE_TRAINER_DEVICE_CLASS"] == "cuda"

    # The services read these values as the chart wrote them.
    for name in ("COACHFORGE_INFERENCE_ENGINE_POOLS", "COACHFORGE_INFERENCE_ENGINE_MAX_LORAS"):
        monkeypatch.setenv(name, inference[name])
    settings = InferenceSettings()
    assert {base: (p.service, p.urls) for base, p in settings.engine_pools.items()} == {
        base: (p["service"], []) for base, p in pools.items()}
    assert settings.engine_max_loras == 12
    monkeypatch.setenv("COACHFORGE_REGISTRY_BASE_MODELS", registry["COACHFORGE_REGISTRY_BASE_MODELS"])
    assert RegistrySettings().base_models == list(BASES)
    monkeypatch.setenv("COACHFORGE_TRAINER_MAX_LORA_RANK", worker["COACHFORGE_TRAINER_MAX_LORA_RANK"])
    assert TrainerSettings().max_lora_rank == 16


def test_one_base_model_renders_no_pools(helm_env: dict[str, str]) -> None:
    docs = render(helm_env)
    assert engines(docs).keys() == download_jobs(docs).keys() == {"SmolLM2-135M-Instruct"}
    for deployment in by_kind(docs, "Deployment").values():
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        if "COACHFORGE_REGISTRY_BASE_MODELS" in env:
            assert "COACHFORGE_INFERENCE_ENGINE_POOLS" not in env
            assert json.loads(env["COACHFORGE_REGISTRY_BASE_MODELS"]) == ["SmolLM2-135M-Instruct"]


# -- network and monitoring -------------------------------------------------------------------------------------


def test_only_inference_reaches_each_pool_and_only_pools_and_inference_hold_the_key(several: Docs) -> None:
    policies = by_kind(several, "NetworkPolicy")
    served = engines(several)
    inference = by_kind(several, "Deployment")["coachforge-inference"]["spec"]["template"]["metadata"]["labels"]
    metrics_from = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    for base, want in BASES.items():
        policy = policies[want["name"]]
        chosen = [b for b, s in served.items() if selects(policy["spec"]["podSelector"]["matchLabels"],
                                                           s["spec"]["template"]["metadata"]["labels"])]
        assert chosen == [base]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        rules = policy["spec"]["ingress"]
        assert [r["ports"] for r in rules] == [[{"port": 8000, "protocol": "TCP"}]] * 2
        (peer,) = rules[0]["from"]
        assert selects(peer["podSelector"]["matchLabels"], inference)
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "inference"
        assert rules[1]["from"] == metrics_from
    key = {"secretKeyRef": {"name": "coachforge-auth", "key": "engine-api-key"}}
    holders = set()
    for doc in several:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            pod = doc["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                if key in env_of(c).values():
                    holders.add(doc["metadata"]["name"])
    assert holders == {want["name"] for want in BASES.values()} | {"coachforge-inference"}


def test_every_pool_is_scraped_like_the_main_engine(several: Docs) -> None:
    monitors = by_kind(several, "ServiceMonitor")
    services = by_kind(several, "Service")
    main = monitors["coachforge-engine"]["spec"]
    for want in BASES.values():
        monitor = monitors[want["name"]]["spec"]
        selector = monitor["selector"]["matchLabels"]
        chosen = [n for n, s in services.items() if selects(selector, s["metadata"]["labels"])]
        assert chosen == [want["name"]]
        assert monitor["endpoints"] == main["endpoints"]
        # The job label is the Service's name: the engine alerts' and dashboards' regex matches it.
        assert re.fullmatch(".*engine.*", want["name"])


# -- names -----------------------------------------------------------------------------------------------------------

DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize(("model_id", "name"), [
    ("Qwen2.5-7B-Instruct", "coachforge-engine-qwen2-5-7b-instruct"),
    ("Phi_3.5--MINI", "coachforge-engine-phi-3-5-mini"),
    ("gemma-2-9b-it.", "coachforge-engine-gemma-2-9b-it"),
    ("7B", "coachforge-engine-7b"),
])
def test_engine_names_are_dns_labels_made_from_the_id(helm_env: dict[str, str], model_id: str, name: str) -> None:
    docs = render(helm_env, "--set", f"models.extra[0].id={model_id}", "--set", "models.extra[0].source=org/model",
                  *MONITORING_API, "--set", "metrics.serviceMonitor.enabled=true")
    sts = engines(docs)[model_id]
    assert sts["metadata"]["name"] == name
    component = name.removeprefix("coachforge-")
    assert sts["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component
    for kind in ("Service", "NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor"):
        assert name in by_kind(docs, kind), kind
    assert re.fullmatch(rf"coachforge-model-download-{component.removeprefix('engine-')}-[0-9a-f]{{8}}",
                        download_jobs(docs)[model_id]["metadata"]["name"])
    assert f"--model=/models/{model_id}" in sts["spec"]["template"]["spec"]["containers"][0]["args"]


def test_long_ids_get_short_distinct_valid_names(helm_env: dict[str, str]) -> None:
    stem = "Meta-Llama-3.1-405B-Instruct-FP8-dynamic-quantized-by-someone-"
    ids = [f"{stem}v2", f"{stem}v3"]
    args = [a for i, model_id in enumerate(ids) for a in ("--set", f"models.extra[{i}].id={model_id}",
                                                          "--set", f"models.extra[{i}].source=org/m{i}")]
    docs = render(helm_env, *args, *MONITORING_API, "--set", "metrics.serviceMonitor.enabled=true")
    served = engines(docs)
    names = {served[i]["metadata"]["name"] for i in ids}
    components = {served[i]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for i in ids}
    jobs = {download_jobs(docs)[i]["metadata"]["name"] for i in ids}
    assert len(names) == len(components) == len(jobs) == 2
    # A StatefulSet's name is at most 52 characters (its controller-revision-hash label must fit in 63).
    assert all(len(n) <= 52 and DNS_LABEL.fullmatch(n) for n in names), names
    assert all(len(c) <= 63 and DNS_LABEL.fullmatch(c) for c in components), components
    assert all(len(j) <= 63 and DNS_LABEL.fullmatch(j) for j in jobs), jobs
    monitors = by_kind(docs, "ServiceMonitor")
    assert names <= monitors.keys()
    for doc in docs:
        if doc["kind"] not in CUSTOM_RESOURCES:
            kubernetes_validate.validate(doc, "1.35.0", strict=True)


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "models.extra[0].id=SmolLM2-135M-Instruct", "--set", "models.extra[0].source=a/b"],
     'models.id (SmolLM2-135M-Instruct) and models.extra[0].id are both "SmolLM2-135M-Instruct"'),
    (["--set", "models.extra[0].id=Qwen2.5-7B", "--set", "models.extra[0].source=a/b",
      "--set", "models.extra[1].id=qwen2_5-7b", "--set", "models.extra[1].source=a/c"],
     "models.extra[0].id (Qwen2.5-7B) and models.extra[1].id (qwen2_5-7b) give the same engine name "
     "coachforge-engine-qwen2-5-7b"),
    (["--set", "models.extra[0].id=Qwen", "--set", "models.extra[0].source=a/b",
      "--set", "models.extra[0].engine.tensorParallelSize=2"],
     "models.extra[0].engine.tensorParallelSize (2) is above its gpu.count (1)"),
    (["--set", "models.extra[0].id=Qwen", "--set", "models.extra[0].source=a/b",
      "--set", "models.extra[0].engine.maxLoraRank=8"],
     "COACHFORGE_TRAINER_LORA_R (16) is above models.extra[0].engine.maxLoraRank (8)"),
    (["--set", "models.extra[0].id=Qwen", "--set", "models.extra[0].source=a/b", "--set", "engine.enabled=false",
      "--set", "engine.externalUrl=http://vllm:8000"], "models.extra needs engine.enabled"),
    (["--set", "models.extra[0].id=Qwen"], "models.extra[0].source is required"),
    (["--set", "models.extra[0].id=../etc"], "at '/models/extra/0/id'"),
    (["--set", "models.extra[0].id=Qwen", "--set", "models.extra[0].engine.port=9000"],
     "at '/models/extra/0/engine': additional properties 'port' not allowed"),
    (["--set", "models.extra[0].source=a/b"], "at '/models/extra/0': missing property 'id'"),
])
def test_bad_extra_bases_fail_with_a_message_naming_the_value(helm_env: dict[str, str], args: list[str],
                                                              message: str) -> None:
    proc = helm(helm_env, "template", "coachforge", str(CHART), *args, check=False)
    assert proc.returncode != 0, f"{args} rendered"
    assert message in proc.stderr, proc.stderr


# -- upgrades --------------------------------------------------------------------------------------------------------


def job_names(docs: Docs) -> dict[str, str]:
    return {base: job["metadata"]["name"] for base, job in download_jobs(docs).items()}


def test_upgrades_keep_each_download_job_until_its_spec_changes(helm_env: dict[str, str], tmp_path: Path,
                                                                several: Docs) -> None:
    before = job_names(several)
    assert len(set(before.values())) == 3

    # New service images, the engines' image kept: every download Job stays as it is.
    upgraded = render(helm_env, *SEVERAL, "--set", "image.tag=0.2.0", "--set", "engine.image.tag=0.1.0")
    assert job_names(upgraded) == before
    assert {b: j["spec"] for b, j in download_jobs(upgraded).items()} == \
        {b: j["spec"] for b, j in download_jobs(several).items()}
    assert by_kind(upgraded, "Deployment")["coachforge-inference"]["spec"]["template"]["spec"]["containers"][0][
        "image"] == "coachforge/inference:0.2.0"

    # A new revision of one extra base: only its Job is a new one.
    extra = extra_entries(VALUES_DIR / "several-bases.yaml")
    extra[1]["revision"] = "v0.4"
    changed = tmp_path / "mistral-v0.4.yaml"
    changed.write_text(yaml.safe_dump({"models": {"extra": extra}}))
    after = job_names(render(helm_env, *SEVERAL, "-f", str(changed)))
    assert {b for b in BASES if after[b] != before[b]} == {"Mistral-7B-Instruct-v0.3"}

    # A new revision of models.id: only the main Job.
    after = job_names(render(helm_env, *SEVERAL, "--set", "models.revision=v2"))
    assert {b for b in BASES if after[b] != before[b]} == {"Llama-3.1-8B-Instruct"}

    # A new engine image downloads with it: every Job is a new one.
    after = job_names(render(helm_env, *SEVERAL, "--set", "engine.image.tag=0.2.0"))
    assert not set(after.values()) & set(before.values())


def test_adding_a_base_leaves_the_main_engine_and_its_download_alone(helm_env: dict[str, str]) -> None:
    """An engine's pods are not restarted when another base is added."""
    one = render(helm_env, "--set", "secrets.seed=s")
    two = render(helm_env, "--set", "secrets.seed=s", "--set", "models.extra[0].id=Qwen2.5-7B-Instruct",
                 "--set", "models.extra[0].source=Qwen/Qwen2.5-7B-Instruct")
    assert engines(two)["SmolLM2-135M-Instruct"] == engines(one)["SmolLM2-135M-Instruct"]
    assert job_names(two)["SmolLM2-135M-Instruct"] == job_names(one)["SmolLM2-135M-Instruct"]
    assert by_kind(two, "Service")["coachforge-engine"] == by_kind(one, "Service")["coachforge-engine"]
