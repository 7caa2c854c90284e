"""The Helm chart: lint, render with several value sets, validate every manifest against the
Kubernetes schemas (strict), and check what operators rely on — probes, security context, GPUs,
the engines' headless Service, PDBs, HPA, migrations hook, NetworkPolicies, ServiceMonitors,
dashboards, real setting names, documented values, and clear errors for bad values."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import CHART, REPO, VALUE_SETS, helm, render, values_args

KUBERNETES_VERSIONS = ("1.29.0", "1.35.0")
#: Custom resources of the Prometheus operator: no schema in kubernetes-validate; checked below.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("keda.sh/v1alpha1", "ScaledObject")}
API_SERVICES = ("dataset", "trainer", "registry", "inference", "coach", "evaluator", "webhooks", "console")


@pytest.fixture(scope="module")
def rendered(helm_env: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {name: render(helm_env, *args) for name, args in VALUE_SETS}


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_helm_lint_passes_for_every_value_set(helm_env: dict[str, str]) -> None:
    for _, args in VALUE_SETS:
        out = helm(helm_env, "lint", "--strict", str(CHART), *values_args(args)).stdout
        assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("value_set", [name for name, _ in VALUE_SETS])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]],
                                                                value_set: str, version: str) -> None:
    docs = rendered[value_set]
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{value_set}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: "
                        f"{err.message} at {'.'.join(map(str, err.path))}")


def test_strict_validation_rejects_unknown_fields() -> None:
    """The check above would catch a misspelt field."""
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                      "metadata": {"labels": {"a": "b"}},
                      "spec": {"containers": [{"name": "x", "image": "x", "livenesProbe": {}}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_custom_resources_are_well_formed(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["external"]
    services = by_kind(docs, "Service")
    monitors = by_kind(docs, "ServiceMonitor")
    assert monitors, "metrics.serviceMonitor.enabled renders ServiceMonitors"
    for name, monitor in monitors.items():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selector = monitor["spec"]["selector"]["matchLabels"]
        targets = [s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()]
        assert len(targets) == 1, f"{name} selects {len(targets)} Services"
        ports = {p["name"] for p in targets[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
        # /metrics is on its own port, never on the REST port the ingress routes.
        assert all(e["port"] == "metrics" for e in monitor["spec"]["endpoints"])
    jobs = {m.removeprefix("coachforge-") for m in monitors}
    assert jobs == {*API_SERVICES, "trainer-worker"}  # engines external
    rule = by_kind(docs, "PrometheusRule")["coachforge"]
    assert {g["name"] for g in rule["spec"]["groups"]} == {"coachforge.recording", "coachforge.alerts"}
    assert "coachforge-engine" in by_kind(rendered["gpu-bundled"], "ServiceMonitor")


def test_services_have_grpc_and_http_probes_named_ports_and_pdbs(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    deployments = by_kind(docs, "Deployment")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for component in API_SERVICES:
        name = f"coachforge-{component}"
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 50051,
                                                                               "metrics": 9400}
        assert container["livenessProbe"]["grpc"]["port"] == 50051
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
        assert container["startupProbe"]["httpGet"]["path"] == "/health"
        assert container["args"] == ["--http-port", "8000", "--grpc-port", "50051", "--metrics-port", "9400"]
        assert container["image"] == f"coachforge/{component}:0.1.0"
        service = by_kind(docs, "Service")[name]
        assert {p["name"]: p.get("appProtocol") for p in service["spec"]["ports"]} == {"http": "http", "grpc": "grpc",
                                                                                   "metrics": "http"}
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == deployments[name]["spec"]["selector"]["matchLabels"]
    for name in ("coachforge-trainer-worker", "coachforge-engine"):
        assert name in pdbs


def test_every_pod_runs_with_a_strict_security_context(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for value_set, docs in rendered.items():
        for name, workload in workloads(docs).items():
            pod = workload["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, (value_set, name)
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, (value_set, name)
            assert pod["automountServiceAccountToken"] is False, (value_set, name)
            for container in pod.get("initContainers", []) + pod["containers"]:
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, (value_set, name, container["name"])
                assert sc["readOnlyRootFilesystem"] is True, (value_set, name, container["name"])
                assert sc["capabilities"] == {"drop": ["ALL"]}, (value_set, name, container["name"])
                assert "resources" in container and container["resources"].get("requests"), (name, container["name"])


def test_trainer_workers_and_engines_land_on_the_gpu_pool(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for value_set in ("defaults", "gpu-bundled"):
        docs = rendered[value_set]
        worker = by_kind(docs, "Deployment")["coachforge-trainer-worker"]["spec"]["template"]["spec"]
        engine = by_kind(docs, "StatefulSet")["coachforge-engine"]["spec"]["template"]["spec"]
        for pod in (worker, engine):
            assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert pod["nodeSelector"]
    engine = by_kind(rendered["gpu-bundled"], "StatefulSet")["coachforge-engine"]
    assert engine["spec"]["replicas"] == 2
    args = engine["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--tensor-parallel-size=2", "--max-lora-rank=64", "--enable-lora", "--enable-prefix-caching",
            "--served-model-name=Llama-3.1-8B-Instruct", "--model=/models/Llama-3.1-8B-Instruct"} <= set(args)
    assert by_kind(rendered["gpu-bundled"], "Deployment")["coachforge-trainer-worker"]["spec"]["replicas"] == 4
    for value_set in ("cpu-dev", "external"):
        for workload in workloads(rendered[value_set]).values():
            pod = workload["spec"]["template"]["spec"]
            for container in pod["containers"]:
                assert "nvidia.com/gpu" not in container["resources"].get("limits", {}), (value_set, container["name"])
            assert "tolerations" not in pod and "nodeSelector" not in pod


def test_inference_reaches_the_engines_through_their_headless_service(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    service = by_kind(docs, "Service")["coachforge-engine"]
    assert service["spec"]["clusterIP"] == "None"
    engine = by_kind(docs, "StatefulSet")["coachforge-engine"]
    assert engine["spec"]["serviceName"] == "coachforge-engine"
    assert service["spec"]["selector"].items() <= engine["spec"]["template"]["metadata"]["labels"].items()
    container = engine["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/models", "/var/lib/coachforge/artifacts"}
    inference = by_kind(docs, "Deployment")["coachforge-inference"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(inference)["COACHFORGE_INFERENCE_ENGINE_URL"] == "http://coachforge-engine:8000"
    external = by_kind(rendered["external"], "Deployment")["coachforge-inference"]["spec"]["template"]["spec"]
    assert env_of(external["containers"][0])["COACHFORGE_INFERENCE_ENGINE_URL"] == "http://vllm.inference.svc:8000"
    assert "coachforge-engine" not in by_kind(rendered["external"], "StatefulSet")


def test_adapters_are_written_and_read_at_the_same_path_on_one_volume(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for value_set, docs in rendered.items():
        claims = set()
        for name, workload in workloads(docs).items():
            pod = workload["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for container in pod["containers"]:
                for mount in container.get("volumeMounts", []):
                    if mount["name"] == "artifacts":
                        assert mount["mountPath"] == "/var/lib/coachforge/artifacts", (value_set, name)
                        claims.add(volumes["artifacts"]["persistentVolumeClaim"]["claimName"])
                        assert env_of(container).get("COACHFORGE_ARTIFACTS_DIR", mount["mountPath"]) == \
                            mount["mountPath"]
        assert len(claims) == 1, (value_set, claims)
    s3 = rendered["external"]
    (pv,) = by_kind(s3, "PersistentVolume").values()
    assert pv["spec"]["csi"]["driver"] == "ru.yandex.s3.csi"
    assert pv["spec"]["csi"]["volumeHandle"] == "coachforge-artifacts/prod"
    assert pv["spec"]["csi"]["nodePublishSecretRef"] == {"name": "csi-s3-secret", "namespace": "kube-system"}
    assert by_kind(s3, "PersistentVolumeClaim")["coachforge-artifacts"]["spec"]["volumeName"] == pv["metadata"]["name"]
    # A single node suffices by default: no ReadWriteMany storage class needed.
    for claim in ("coachforge-artifacts", "coachforge-models"):
        pvc = by_kind(rendered["defaults"], "PersistentVolumeClaim")[claim]
        assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"], claim


def test_bundled_or_external_database_and_kafka(rendered: dict[str, list[dict[str, Any]]]) -> None:
    bundled = rendered["defaults"]
    assert {"coachforge-postgresql", "coachforge-kafka"} <= by_kind(bundled, "StatefulSet").keys()
    dataset = by_kind(bundled, "Deployment")["coachforge-dataset"]["spec"]["template"]["spec"]["containers"][0]
    env = env_of(dataset)
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "coachforge-postgresql", "key": "database-url"}}
    assert env["COACHFORGE_KAFKA_BOOTSTRAP"] == "coachforge-kafka:9092"
    assert env["COACHFORGE_INTERNAL_TOKEN"] == {"secretKeyRef": {"name": "coachforge-auth", "key": "internal-token"}}
    secrets = by_kind(bundled, "Secret")
    assert {"internal-token", "api-key"} <= secrets["coachforge-auth"]["data"].keys()
    assert {"password", "database-url"} <= secrets["coachforge-postgresql"]["data"].keys()

    external = rendered["external"]
    assert not {"coachforge-postgresql", "coachforge-kafka"} & by_kind(external, "StatefulSet").keys()
    assert not by_kind(external, "Secret"), "every secret is the operator's own"
    env = env_of(by_kind(external, "Deployment")["coachforge-dataset"]["spec"]["template"]["spec"]["containers"][0])
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "coachforge-database", "key": "url"}}
    assert env["COACHFORGE_KAFKA_BOOTSTRAP"] == {"secretKeyRef": {"name": "coachforge-kafka",
                                                                  "key": "bootstrap-servers"}}
    assert by_kind(external, "Deployment")["coachforge-dataset"]["spec"]["template"]["spec"]["containers"][0][
        "image"] == "registry.example.com/ml/coachforge/dataset:0.1.0"


def test_migrations_run_as_a_hook_before_install_and_upgrade(rendered: dict[str, list[dict[str, Any]]]) -> None:
    job = by_kind(rendered["external"], "Job")["coachforge-migrations"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith("coachforge/migrations:0.1.0")
    assert env_of(container)["DATABASE_URL"] == {"secretKeyRef": {"name": "coachforge-database", "key": "url"}}
    assert env_of(container)["COACHFORGE_API_KEY"] == {"secretKeyRef": {"name": "coachforge-auth", "key": "api-key"}}
    # The bundled PostgreSQL only exists once the release does: first install migrates right after it.
    bundled = by_kind(rendered["defaults"], "Job")["coachforge-migrations"]
    assert bundled["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    # Its service account is a hook created before it, in the same phases (the release's does not exist yet).
    account = by_kind(rendered["external"], "ServiceAccount")[job["spec"]["template"]["spec"]["serviceAccountName"]]
    assert account["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(account["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"])


def test_inference_scales_with_an_hpa(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["external"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["coachforge-inference"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "coachforge-inference"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert "replicas" not in by_kind(docs, "Deployment")["coachforge-inference"]["spec"]
    assert not by_kind(rendered["cpu-dev"], "HorizontalPodAutoscaler")
    assert by_kind(rendered["cpu-dev"], "Deployment")["coachforge-inference"]["spec"]["replicas"] == 1


def test_network_policies_are_on_by_default_and_cover_every_pod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for value_set in rendered:
        docs = rendered[value_set]
        policies = by_kind(docs, "NetworkPolicy")

        def selected(labels: dict[str, str], policies: dict[str, dict[str, Any]] = policies) -> bool:
            for policy in policies.values():
                selector = policy["spec"]["podSelector"]
                if selector.get("matchLabels", {}).items() <= labels.items() and all(
                        labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])):
                    return True
            return False

        for name, workload in workloads(docs).items():
            assert selected(workload["spec"]["template"]["metadata"]["labels"]), f"{value_set}: {name} unprotected"
    engine = by_kind(rendered["gpu-bundled"], "NetworkPolicy")["coachforge-engine"]
    from_inference = engine["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert from_inference["app.kubernetes.io/component"] == "inference"
    dataset = by_kind(rendered["external"], "NetworkPolicy")["coachforge-dataset"]
    assert dataset["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]


#: Each gRPC target variable the chart sets, and the service whose Service it must name.
GRPC_TARGETS = {
    "COACHFORGE_TRAINER_DATASET_GRPC_TARGET": "dataset", "COACHFORGE_TRAINER_REGISTRY_GRPC_TARGET": "registry",
    "COACHFORGE_INFERENCE_REGISTRY_GRPC_TARGET": "registry", "COACHFORGE_INFERENCE_DATASET_GRPC_TARGET": "dataset",
    "COACHFORGE_COACH_REGISTRY_GRPC_TARGET": "registry", "COACHFORGE_COACH_DATASET_GRPC_TARGET": "dataset",
    "COACHFORGE_COACH_INFERENCE_GRPC_TARGET": "inference",
    "COACHFORGE_EVALUATOR_INFERENCE_GRPC_TARGET": "inference", "COACHFORGE_EVALUATOR_REGISTRY_GRPC_TARGET": "registry",
    "COACHFORGE_EVALUATOR_DATASET_GRPC_TARGET": "dataset", "COACHFORGE_DATASET_INFERENCE_GRPC_TARGET": "inference",
    "COACHFORGE_DATASET_TRAINER_GRPC_TARGET": "trainer", "COACHFORGE_REGISTRY_INFERENCE_GRPC_TARGET": "inference",
    "COACHFORGE_REGISTRY_DATASET_GRPC_TARGET": "dataset", "COACHFORGE_REGISTRY_TRAINER_GRPC_TARGET": "trainer",
    "COACHFORGE_REGISTRY_EVALUATOR_GRPC_TARGET": "evaluator",
}


def test_services_reach_each_other_at_the_grpc_ports_of_their_services(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Every service is told where the others' gRPC servers are (the evaluator samples through inference,
    checks models in the registry and reads eval files from the dataset service), and the
    NetworkPolicies, when on, let those calls in."""
    for value_set, docs in rendered.items():
        services = by_kind(docs, "Service")
        deployments = by_kind(docs, "Deployment")
        for component in API_SERVICES:
            env = env_of(deployments[f"coachforge-{component}"]["spec"]["template"]["spec"]["containers"][0])
            for variable, callee in GRPC_TARGETS.items():
                assert env[variable] == f"coachforge-{callee}:50051", (value_set, component, variable)
                ports = {p["name"]: p["port"] for p in services[f"coachforge-{callee}"]["spec"]["ports"]}
                assert ports["grpc"] == 50051, (value_set, callee)
    docs = rendered["external"]
    policies = by_kind(docs, "NetworkPolicy")
    evaluator = by_kind(docs, "Deployment")["coachforge-evaluator"]["spec"]["template"]["metadata"]["labels"]
    for callee in ("inference", "registry", "dataset"):
        grpc_rules = [r for r in policies[f"coachforge-{callee}"]["spec"]["ingress"]
                      if {"port": 50051, "protocol": "TCP"} in r["ports"]]
        assert any(peer["podSelector"]["matchLabels"].items() <= evaluator.items()
                   for r in grpc_rules for peer in r["from"]), f"the evaluator cannot call {callee}"
    own = policies["coachforge-evaluator"]["spec"]["ingress"]
    assert own[0]["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert own[0]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]


def test_ingress_routes_every_api_path_to_its_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    ingress = by_kind(rendered["external"], "Ingress")["coachforge"]
    paths = {p["path"]: p["backend"]["service"]["name"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths == {"/v1/files": "coachforge-dataset", "/v1/datasets": "coachforge-dataset",
                     "/v1/knowledge_bases": "coachforge-dataset",
                     "/v1/fine_tuning": "coachforge-trainer", "/v1/models": "coachforge-registry",
                     "/v1/avatars": "coachforge-registry", "/v1/chat": "coachforge-inference",
                     "/v1/completions": "coachforge-inference", "/v1/coach": "coachforge-coach",
                     "/v1/evals": "coachforge-evaluator", "/v1/comparisons": "coachforge-evaluator",
                     "/v1/usage": "coachforge-inference", "/v1/webhooks": "coachforge-webhooks",
                     "/console": "coachforge-console"}


def test_dashboards_ship_as_labelled_config_maps(rendered: dict[str, list[dict[str, Any]]]) -> None:
    maps = [d for d in rendered["defaults"] if d["kind"] == "ConfigMap" and "grafana_dashboard" in
            d["metadata"]["labels"]]
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert sorted(name for m in maps for name in m["data"]) == files
    uids = set()
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert m["metadata"]["annotations"]["grafana_folder"] == "CoachForge"
        for text in m["data"].values():
            board = json.loads(text)
            uids.add(board["uid"])
            assert board["title"].startswith("CoachForge / ")
            assert board["templating"]["list"][0]["type"] == "datasource"
            panels = [p for p in board["panels"] if p["type"] != "row"]
            assert panels and all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in panels)
            assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    assert len(uids) == len(files)


def test_every_coachforge_variable_the_chart_sets_is_a_real_setting(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    from coachforge_coach.settings import CoachSettings
    from coachforge_console.settings import ConsoleSettings
    from coachforge_dataset.settings import DatasetSettings
    from coachforge_evaluator.settings import EvaluatorSettings
    from coachforge_inference.settings import InferenceSettings
    from coachforge_registry.settings import RegistrySettings
    from coachforge_shared.settings import PlatformSettings
    from coachforge_trainer.settings import TrainerSettings
    from coachforge_webhooks.settings import WebhooksSettings

    known = {"DATABASE_URL"}
    for cls in (PlatformSettings, DatasetSettings, TrainerSettings, RegistrySettings, InferenceSettings,
                CoachSettings, EvaluatorSettings, WebhooksSettings, ConsoleSettings):
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            known.add(f"{prefix}{name}".upper())
            alias = field.validation_alias
            if alias is not None and hasattr(alias, "choices"):
                known.update(str(c).upper() for c in alias.choices)
    for value_set, docs in rendered.items():
        for workload in workloads(docs).values():
            pod = workload["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                names = {e["name"] for e in container.get("env", [])}
                unknown = {n for n in names if n.startswith("COACHFORGE_") or n == "DATABASE_URL"} - known
                assert not unknown, f"{value_set}: {container['name']} sets unknown settings {sorted(unknown)}"


def test_bad_values_fail_with_a_message_naming_the_value(helm_env: dict[str, str]) -> None:
    cases = [
        (["--set", "postgresql.enabled=false"], "externalDatabase.existingSecret is required"),
        (["--set", "externalDatabase.existingSecret=db"], "postgresql.enabled and externalDatabase.existingSecret"),
        (["--set", "kafka.enabled=false"], "externalKafka.bootstrapServers or externalKafka.existingSecret"),
        (["--set", "artifacts.type=nfs"], "at '/artifacts/type': value must be one of 'volume', 's3'"),
        (["--set", "artifacts.type=s3"], "artifacts.s3.bucket is required"),
        (["--set", "engine.enabled=false"], "engine.externalUrl is required"),
        (["--set-string", "trainerWorker.env.COACHFORGE_TRAINER_LORA_R=64"], "above engine.maxLoraRank (16)"),
        (["--set", "inference.autoscaling.minReplicas=5", "--set", "inference.autoscaling.maxReplicas=2"],
         "minReplicas is above maxReplicas"),
        (["--set", "dataset.replicaCount=two"], "replicaCount"),
        (["--set", "engine.gpu.count=0"], "count"),
    ]
    for args, message in cases:
        proc = helm(helm_env, "template", "coachforge", str(CHART), *args, check=False)
        assert proc.returncode != 0, f"{args} rendered"
        assert message in proc.stderr, f"{args}: {proc.stderr}"


def test_every_value_is_documented() -> None:
    """Each key in values.yaml has a comment on the line above it, except inside free-form blocks
    (resources, security contexts, selectors, tolerations, ...) documented by their parent."""
    freeform = {"podSecurityContext", "containerSecurityContext", "resources", "nodeSelector", "tolerations",
                "affinity", "podAnnotations", "annotations", "labels", "commonLabels", "env", "requests", "limits"}
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z0-9_.\-/]+):", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inside_freeform = any(k in freeform for _, k in stack)
        stack.append((indent, key))
        if inside_freeform:
            continue
        if not (i > 0 and lines[i - 1].strip().startswith("#")) and "#" not in line.split(":", 1)[1]:
            undocumented.append(f"line {i + 1}: {'.'.join(k for _, k in stack)}")
    assert not undocumented, "undocumented values:\n" + "\n".join(undocumented)


def test_the_schema_rejects_misspelt_top_level_values(helm_env: dict[str, str]) -> None:
    proc = helm(helm_env, "template", "coachforge", str(CHART), "--set", "infrence.enabled=false", check=False)
    assert proc.returncode != 0 and "infrence" in proc.stderr, proc.stderr


def test_skaffold_builds_every_image_the_chart_uses_and_deploys_the_chart(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert config["apiVersion"].startswith("skaffold/v4") and config["kind"] == "Config"
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    for artifact in artifacts.values():
        assert artifact.get("context", ".") == "."
        assert (REPO / artifact["docker"]["dockerfile"]).is_file(), artifact
    (release,) = config["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"]).resolve() == CHART
    templates = release["setValueTemplates"]
    # Every CoachForge image in the chart is set from a built artifact.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart_images = {key: values[key]["image"]["repository"] for key in values
                    if isinstance(values[key], dict) and isinstance(values[key].get("image"), dict)
                    and str(values[key]["image"].get("repository", "")).startswith("coachforge/")}
    assert set(chart_images) == {"migrations", "dataset", "trainer", "trainerWorker", "registry", "inference",
                                 "coach", "evaluator", "webhooks", "engine", "console"}
    for key, repository in chart_images.items():
        sanitized = re.sub(r"[/\-.:]", "_", repository)
        assert repository in artifacts, f"no artifact builds {repository}"
        assert templates[f"{key}.image.repository"] == f"{{{{.IMAGE_REPO_{sanitized}}}}}"
        assert templates[f"{key}.image.tag"] == f"{{{{.IMAGE_TAG_{sanitized}}}}}@{{{{.IMAGE_DIGEST_{sanitized}}}}}"
    profiles = {p["name"]: p for p in config["profiles"]}
    assert {"cpu-dev", "gpu"} <= profiles.keys()
    for name, profile in profiles.items():
        patched = apply_patches(config, profile.get("patches", []))
        (release,) = patched["deploy"]["helm"]["releases"]
        for values_file in release.get("valuesFiles", []):
            assert (REPO / values_file).is_file(), values_file
        engine = next(a for a in patched["build"]["artifacts"] if a["image"] == "coachforge/engine")
        assert engine["docker"]["target"] == ("cpu" if name == "cpu-dev" else "gpu")
        assert release["valuesFiles"] == [f"deploy/helm/values-{name}.yaml"]


def apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """Skaffold profile patches (JSON patch add/replace) applied to a copy of ``config``."""
    import copy

    doc = copy.deepcopy(config)
    for patch in patches:
        *parents, last = patch["path"].strip("/").split("/")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        assert patch["op"] in ("add", "replace"), patch
        if patch["op"] == "replace":
            assert (int(last) < len(node)) if isinstance(node, list) else last in node, patch
        if isinstance(node, list):
            node[int(last)] = patch["value"]
        else:
            node[last] = patch["value"]
    return doc


def test_install_notes_tell_how_to_reach_the_api_and_get_the_key(helm_env: dict[str, str]) -> None:
    for name, args in VALUE_SETS:
        out = helm(helm_env, "install", "coachforge", str(CHART), "--namespace", "coachforge", "--dry-run=client",
                   *values_args(args)).stdout
        notes = out[out.index("NOTES:"):]
        assert "/v1" in notes and "base64 -d" in notes, (name, notes)
        assert "get secret coachforge-auth" in notes, (name, notes)  # generated, or external.yaml's own


def test_the_console_calls_each_service_and_keeps_its_session_key_in_a_secret(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    console = by_kind(docs, "Deployment")["coachforge-console"]["spec"]["template"]["spec"]["containers"][0]
    env = env_of(console)
    routes = json.loads(env["COACHFORGE_CONSOLE_API_ROUTES"])
    assert routes["/v1/fine_tuning"] == "http://coachforge-trainer:8000"
    assert routes["/v1/usage"] == "http://coachforge-inference:8000"
    assert routes["/v1/comparisons"] == "http://coachforge-evaluator:8000"
    assert env["COACHFORGE_CONSOLE_API_URL"] == "http://coachforge-inference:8000"
    assert env["COACHFORGE_CONSOLE_SECRET_KEY"] == {"secretKeyRef": {"name": "coachforge-auth",
                                                                     "key": "console-secret-key"}}
    assert "console-secret-key" in by_kind(docs, "Secret")["coachforge-auth"]["data"]
    for name, deployment in by_kind(docs, "Deployment").items():  # the key reaches no other pod
        if name != "coachforge-console":
            for container in deployment["spec"]["template"]["spec"]["containers"]:
                assert "COACHFORGE_CONSOLE_SECRET_KEY" not in env_of(container), name
    external = env_of(by_kind(rendered["external"], "Deployment")["coachforge-console"]["spec"]["template"]["spec"][
        "containers"][0])
    assert external["COACHFORGE_CONSOLE_SECRET_KEY"] == {"secretKeyRef": {"name": "coachforge-auth",
                                                                          "key": "console-secret-key"}}
    # With NetworkPolicies on, the console may call every service's REST port.
    policies = by_kind(rendered["external"], "NetworkPolicy")
    labels = by_kind(rendered["external"], "Deployment")["coachforge-console"]["spec"]["template"]["metadata"][
        "labels"]
    for callee in ("dataset", "trainer", "registry", "inference", "coach", "evaluator", "webhooks"):
        rules = [r for r in policies[f"coachforge-{callee}"]["spec"]["ingress"]
                 if {"port": 8000, "protocol": "TCP"} in r["ports"]]
        assert any(peer.get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
                   and peer.get("podSelector") for r in rules for peer in r.get("from", [])), callee


def test_the_webhooks_seal_their_secrets_with_a_generated_or_given_key(
        rendered: dict[str, list[dict[str, Any]]], helm_env: dict[str, str]) -> None:
    docs = rendered["defaults"]
    for name, deployment in by_kind(docs, "Deployment").items():  # the sealing key reaches the webhooks pods only
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        if name == "coachforge-webhooks":
            assert env["COACHFORGE_WEBHOOKS_SECRET_KEYS"] == {"secretKeyRef": {"name": "coachforge-auth",
                                                                               "key": "webhooks-secret-keys"}}
        else:
            assert "COACHFORGE_WEBHOOKS_SECRET_KEYS" not in env, name
    generated = base64.b64decode(by_kind(docs, "Secret")["coachforge-auth"]["data"]["webhooks-secret-keys"])
    assert len(generated) >= 32  # what the service accepts as a key
    own = render(helm_env, "--set", "webhooks.secretKeys.existingSecret=hook-keys", "--set",
                 "webhooks.secretKeys.key=keys")
    assert "webhooks-secret-keys" not in by_kind(own, "Secret")["coachforge-auth"]["data"]
    env = env_of(by_kind(own, "Deployment")["coachforge-webhooks"]["spec"]["template"]["spec"]["containers"][0])
    assert env["COACHFORGE_WEBHOOKS_SECRET_KEYS"] == {"secretKeyRef": {"name": "hook-keys", "key": "keys"}}
