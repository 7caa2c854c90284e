"""The chart on a real cluster: a first `helm install` and every `helm upgrade` apply (hooks ordered after
the ServiceAccounts and Secrets they use, no immutable field changed by an upgrade), pods write only to
mounted volumes, NetworkPolicies open nothing to everyone, credentials are stable under GitOps renders,
custom resources appear only where their API exists, and the engines, storage, scaling and smoke test are
wired as documented."""

from __future__ import annotations

import json
from typing import Any

import pytest
from deploy_helpers import CHART, EXAMPLES_DIR, KEDA_API, MONITORING_API, VALUE_SETS, VALUES_DIR, helm, render

Docs = list[dict[str, Any]]


@pytest.fixture(scope="module")
def rendered(helm_env: dict[str, str]) -> dict[str, Docs]:
    return {name: render(helm_env, *args) for name, args in VALUE_SETS}


def by_kind(docs: Docs, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pods(docs: Docs) -> dict[str, dict[str, Any]]:
    """Pod specs of every workload and bare Pod (the helm test), by ``Kind/name``."""
    found = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            found[f"{d['kind']}/{d['metadata']['name']}"] = d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            found[f"Pod/{d['metadata']['name']}"] = d["spec"]
    return found


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def hook_phases(doc: dict[str, Any]) -> set[str]:
    hook = doc["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    return {h.strip() for h in hook.split(",") if h.strip()}


def hook_weight(doc: dict[str, Any]) -> int:
    return int(doc["metadata"].get("annotations", {}).get("helm.sh/hook-weight", "0"))


def secret_refs(pod: dict[str, Any]) -> set[str]:
    names = set()
    for container in pod.get("initContainers", []) + pod["containers"]:
        for e in container.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                names.add(source["secretRef"]["name"])
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
    return names


# -- install and upgrade ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value_set", [name for name, _ in VALUE_SETS])
def test_hooks_run_after_the_service_accounts_and_secrets_they_use(rendered: dict[str, Docs],
                                                                   value_set: str) -> None:
    """A hook runs before the release's ordinary resources exist (pre-install) or after them (post-install):
    what it needs must be a hook of the same phases with a lower weight, or an ordinary resource used only
    after install, or something the operator created beforehand (an existingSecret: not rendered)."""
    docs = rendered[value_set]
    hooks = [d for d in docs if hook_phases(d) - {"test"}]
    assert hooks, value_set
    for hook in hooks:
        if hook["kind"] != "Job":
            continue
        pod = hook["spec"]["template"]["spec"]
        needed = [("ServiceAccount", pod.get("serviceAccountName", "default"))]
        needed += [("Secret", name) for name in sorted(secret_refs(pod))]
        for kind, name in needed:
            if name == "default":
                continue
            dependency = by_kind(docs, kind).get(name)
            if dependency is None:
                continue  # created by the operator before the release
            where = f"{value_set}: Job/{hook['metadata']['name']} uses {kind}/{name}"
            if hook_phases(dependency):
                assert hook_phases(hook) <= hook_phases(dependency), where
                assert hook_weight(dependency) < hook_weight(hook), where
            else:
                assert "pre-install" not in hook_phases(hook), f"{where}, which does not exist before install"


def test_the_external_database_path_migrates_before_install_under_its_own_hook_account(
        rendered: dict[str, Docs]) -> None:
    docs = rendered["external"]
    job = by_kind(docs, "Job")["coachforge-migrations"]
    assert "pre-install" in hook_phases(job)
    account = by_kind(docs, "ServiceAccount")[job["spec"]["template"]["spec"]["serviceAccountName"]]
    assert hook_phases(account) == hook_phases(job)
    assert "before-hook-creation" in account["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    # The release's own service account stays an ordinary resource (the pods need it after the hook is gone).
    assert not hook_phases(by_kind(docs, "ServiceAccount")["coachforge"])


IMMUTABLE = {
    "Deployment": [("spec", "selector")],
    "StatefulSet": [("spec", "selector"), ("spec", "serviceName"), ("spec", "volumeClaimTemplates"),
                    ("spec", "podManagementPolicy")],
    "Service": [("spec", "clusterIP"), ("spec", "selector")],
    "PersistentVolumeClaim": [("spec",)],
    "PersistentVolume": [("spec",)],
    "PodDisruptionBudget": [("spec", "selector")],
}


def dig(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


@pytest.mark.parametrize("value_set", [name for name, _ in VALUE_SETS])
@pytest.mark.parametrize("change", [("--set", "image.tag=0.2.0"),
                                    ("--set", "engine.image.tag=0.2.0", "--set", "models.revision=v2")])
def test_an_upgrade_with_new_images_changes_no_immutable_field(helm_env: dict[str, str], value_set: str,
                                                               change: tuple[str, ...]) -> None:
    """`helm upgrade` patches resources of the same name: their immutable fields must not change. Jobs
    are immutable as a whole: each is a hook deleted before it is created again, or carries a hash of
    its spec in its name (a changed spec is a new Job)."""
    args = dict(VALUE_SETS)[value_set]
    before = render(helm_env, *args)
    after = render(helm_env, *args, *change)
    if before == after:  # nothing uses the changed images here (external engines, no download Job)
        assert not {"coachforge-engine"} & by_kind(after, "StatefulSet").keys(), value_set
        assert not [d for d in after if d["metadata"]["name"].startswith("coachforge-model-download")], value_set
    old = {(d["kind"], d["metadata"]["name"]): d for d in before}
    for doc in after:
        key = (doc["kind"], doc["metadata"]["name"])
        if doc["kind"] == "Job":
            policy = doc["metadata"].get("annotations", {}).get("helm.sh/hook-delete-policy", "")
            if hook_phases(doc):
                assert "before-hook-creation" in policy, key
            elif key in old:
                assert old[key]["spec"] == doc["spec"], f"{value_set}: {key} changed under the same name"
            continue
        if key not in old or hook_phases(doc):
            continue
        for path in IMMUTABLE.get(doc["kind"], []):
            assert dig(old[key], path) == dig(doc, path), f"{value_set}: {key} {'.'.join(path)} changed"
    downloads = [k for k in old if k[0] == "Job" and k[1].startswith("coachforge-model-download-")]
    if downloads and "engine.image.tag=0.2.0" in change:
        renamed = [d["metadata"]["name"] for d in after if d["kind"] == "Job"
                   and d["metadata"]["name"].startswith("coachforge-model-download-")]
        assert renamed and renamed[0] != downloads[0][1], "a new engine image is a new download Job"


# -- pods, volumes and network ----------------------------------------------------------------------------

#: Variables whose value is a path a process writes to (the models directory and the remotes file are only read).
READ_ONLY_PATHS = {"COACHFORGE_MODELS_DIR", "COACHFORGE_TRAINER_REMOTES_FILE", "COACHFORGE_INFERENCE_REMOTES_FILE"}


@pytest.mark.parametrize("value_set", [name for name, _ in VALUE_SETS])
def test_every_path_a_pod_is_given_lies_on_a_mounted_volume(rendered: dict[str, Docs], value_set: str) -> None:
    """Root filesystems are read-only: every environment variable naming a path points into a volume
    mount, a writable one unless the path is only read."""
    for where, pod in pods(rendered[value_set]).items():
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, (where, container["name"])
            mounts = container.get("volumeMounts", [])
            for name, value in env_of(container).items():
                if not isinstance(value, str) or not value.startswith("/"):
                    continue
                under = [m for m in mounts if value == m["mountPath"] or value.startswith(m["mountPath"].rstrip("/")
                                                                                         + "/")]
                assert under, f"{value_set}: {where} {container['name']} {name}={value} is on no volume"
                if name not in READ_ONLY_PATHS:
                    assert not any(m.get("readOnly") for m in under), \
                        f"{value_set}: {where} {container['name']} {name}={value} is read-only"


def test_inference_caches_adapters_on_the_volume_the_engines_load_from(rendered: dict[str, Docs]) -> None:
    for value_set in ("defaults", "gitops-minio", "gpu-bundled"):
        docs = rendered[value_set]
        inference = by_kind(docs, "Deployment")["coachforge-inference"]["spec"]["template"]["spec"]
        (container,) = inference["containers"]
        cache = env_of(container)["COACHFORGE_INFERENCE_ADAPTER_CACHE_DIR"]
        mount = next(m for m in container["volumeMounts"] if cache.startswith(m["mountPath"] + "/"))
        claim = next(v for v in inference["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]
        engine = by_kind(docs, "StatefulSet")["coachforge-engine"]["spec"]["template"]["spec"]
        engine_mount = next(m for m in engine["containers"][0]["volumeMounts"] if m["name"] == "artifacts")
        engine_claim = next(v for v in engine["volumes"] if v["name"] == "artifacts")["persistentVolumeClaim"]
        assert engine_claim["claimName"] == claim["claimName"], value_set
        assert engine_mount["mountPath"] == mount["mountPath"], value_set  # adapters are loaded by path


@pytest.mark.parametrize("value_set", [name for name, _ in VALUE_SETS])
def test_no_network_policy_rule_opens_a_port_to_everyone(rendered: dict[str, Docs], value_set: str) -> None:
    policies = by_kind(rendered[value_set], "NetworkPolicy")
    assert policies, f"{value_set}: NetworkPolicies are on by default"
    for name, policy in policies.items():
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{value_set}: {name} has a rule without from: {rule}"
            for peer in rule["from"]:
                assert peer.get("podSelector") is not None or peer.get("namespaceSelector") or \
                    peer.get("ipBlock", {}).get("cidr") not in (None, "0.0.0.0/0", "::/0"), (value_set, name, peer)


def test_only_inference_reaches_the_engines_and_holds_their_key(rendered: dict[str, Docs]) -> None:
    for value_set in ("defaults", "gpu-bundled", "gitops-minio"):
        docs = rendered[value_set]
        engine = by_kind(docs, "NetworkPolicy")["coachforge-engine"]
        inference_labels = by_kind(docs, "Deployment")["coachforge-inference"]["spec"]["template"]["metadata"]["labels"]
        metrics_from = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        for rule in engine["spec"]["ingress"]:
            selectors = [p.get("podSelector", {}).get("matchLabels", {}) for p in rule["from"]]
            is_inference = selectors and all(s and s.items() <= inference_labels.items() for s in selectors)
            assert is_inference or rule["from"] == metrics_from, (value_set, rule)
        container = by_kind(docs, "StatefulSet")["coachforge-engine"]["spec"]["template"]["spec"]["containers"][0]
        key = env_of(container)["VLLM_API_KEY"]
        assert key == {"secretKeyRef": {"name": "coachforge-auth", "key": "engine-api-key"}}, value_set
        assert "engine-api-key" in by_kind(docs, "Secret")["coachforge-auth"]["data"]
        for where, pod in pods(docs).items():
            for c in pod.get("initContainers", []) + pod["containers"]:
                env = env_of(c)
                holds = key in env.values()
                expected = where in ("StatefulSet/coachforge-engine", "Deployment/coachforge-inference") and \
                    c["name"] in ("engine", "inference")
                assert holds == expected, (value_set, where, c["name"])
                if expected and c["name"] == "inference":
                    assert env["COACHFORGE_INFERENCE_ENGINE_API_KEY"] == key


def test_external_engines_get_the_key_only_from_an_existing_secret(helm_env: dict[str, str]) -> None:
    args = ("-f", str(VALUES_DIR / "external.yaml"), *MONITORING_API)
    inference = by_kind(render(helm_env, *args), "Deployment")["coachforge-inference"]
    assert "COACHFORGE_INFERENCE_ENGINE_API_KEY" not in env_of(inference["spec"]["template"]["spec"]["containers"][0])
    docs = render(helm_env, *args, "--set", "engine.apiKey.existingSecret=vllm-key")
    inference = by_kind(docs, "Deployment")["coachforge-inference"]
    assert env_of(inference["spec"]["template"]["spec"]["containers"][0])["COACHFORGE_INFERENCE_ENGINE_API_KEY"] == \
        {"secretKeyRef": {"name": "vllm-key", "key": "engine-api-key"}}


def test_the_dataset_service_asks_the_trainer_not_the_registry(helm_env: dict[str, str],
                                                              rendered: dict[str, Docs]) -> None:
    def dataset_env(docs: Docs) -> dict[str, Any]:
        return env_of(by_kind(docs, "Deployment")["coachforge-dataset"]["spec"]["template"]["spec"]["containers"][0])

    for value_set, docs in rendered.items():
        assert dataset_env(docs)["COACHFORGE_DATASET_TRAINER_GRPC_TARGET"] == "coachforge-trainer:50051", value_set
    # Without a trainer in the release the check is off (""), never the platform's fallback (the registry).
    env = dataset_env(render(helm_env, "--set", "trainer.enabled=false"))
    assert env["COACHFORGE_DATASET_TRAINER_GRPC_TARGET"] == ""


# -- secrets ------------------------------------------------------------------------------------------------

def secret_data(docs: Docs) -> dict[str, dict[str, str]]:
    return {name: s["data"] for name, s in by_kind(docs, "Secret").items()}


def test_generated_secrets_are_stable_under_gitops_renders_with_a_seed(helm_env: dict[str, str]) -> None:
    args = ("-f", str(VALUES_DIR / "gitops-minio.yaml"))
    first, second = secret_data(render(helm_env, *args)), secret_data(render(helm_env, *args))
    assert first == second
    assert {"coachforge-auth", "coachforge-postgresql", "coachforge-minio", "coachforge-csi-s3"} <= first.keys()
    values = [v for data in first.values() for k, v in data.items() if k not in ("root-user", "accessKeyID",
                                                                              "secretAccessKey", "endpoint",
                                                                              "database-url")]
    assert len(values) == len(set(values)), "every credential is its own"
    other = secret_data(render(helm_env, *args, "--set", "secrets.seed=another-seed"))
    assert other["coachforge-auth"]["api-key"] != first["coachforge-auth"]["api-key"]
    # Another namespace (another environment from the same values) gets other credentials too.
    elsewhere = secret_data(render(helm_env, *args, namespace="staging"))
    assert elsewhere["coachforge-auth"]["internal-token"] != first["coachforge-auth"]["internal-token"]
    # The csi-s3 driver and the services use MinIO's credentials.
    assert first["coachforge-csi-s3"]["secretAccessKey"] == first["coachforge-minio"]["root-password"]


def test_without_a_seed_generated_secrets_change_with_every_offline_render(helm_env: dict[str, str]) -> None:
    """What the seed is for: `helm template` cannot read the cluster, so without a seed (or existing
    Secrets) every GitOps render would rotate the credentials."""
    assert secret_data(render(helm_env))["coachforge-auth"] != secret_data(render(helm_env))["coachforge-auth"]


def test_every_credential_can_come_from_an_existing_secret(helm_env: dict[str, str]) -> None:
    docs = render(helm_env, "--set", "auth.internalToken.existingSecret=mine",
                  "--set", "auth.apiKey.existingSecret=mine", "--set", "console.secretKey.existingSecret=mine",
                  "--set", "engine.apiKey.existingSecret=mine", "--set", "webhooks.secretKeys.existingSecret=mine",
                  "--set", "postgresql.auth.existingSecret=pg",
                  "--set", "minio.enabled=true", "--set", "minio.auth.existingSecret=s3",
                  "--set", "objectStorage.enabled=true")
    assert not by_kind(docs, "Secret"), "nothing generated"
    refs = set().union(*(secret_refs(p) for p in pods(docs).values()))
    assert refs == {"mine", "pg", "s3"}
    registry = env_of(by_kind(docs, "Deployment")["coachforge-registry"]["spec"]["template"]["spec"]["containers"][0])
    assert registry["DATABASE_URL"] == "postgresql+psycopg://coachforge:$(PGPASSWORD)@coachforge-postgresql:5432/coachforge"
    assert registry["PGPASSWORD"] == {"secretKeyRef": {"name": "pg", "key": "password"}}
    assert registry["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "root-password"}}


# -- custom resources -----------------------------------------------------------------------------------------

def test_monitoring_objects_need_their_api_or_the_force_switch(helm_env: dict[str, str]) -> None:
    on = ("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
          "--set", "metrics.dcgm.enabled=true")
    kinds = ("ServiceMonitor", "PrometheusRule")
    assert not [d for d in render(helm_env, *on) if d["kind"] in kinds], "no monitoring.coreos.com/v1: none"
    assert not [d for d in render(helm_env, *MONITORING_API) if d["kind"] in kinds], "not enabled: none"
    for extra in (MONITORING_API, ("--set", "metrics.assumeApiPresent=true")):
        docs = render(helm_env, *on, *extra)
        assert {d["kind"] for d in docs if d["kind"] in kinds} == set(kinds), extra
        assert "coachforge-dcgm" in by_kind(docs, "ServiceMonitor")


def test_keda_scales_trainer_workers_on_the_queue_down_to_zero(rendered: dict[str, Docs],
                                                               helm_env: dict[str, str]) -> None:
    docs = rendered["gitops-minio"]
    scaled = by_kind(docs, "ScaledObject")["coachforge-trainer-worker"]
    worker = by_kind(docs, "Deployment")["coachforge-trainer-worker"]
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                "name": worker["metadata"]["name"]}
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 6)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert "coachforge_training_jobs" in query and "queued|running" in query and 'job="coachforge-trainer"' in query
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    # Shared GPU pools: a priority class and a Kueue queue on the workers.
    pod = worker["spec"]["template"]
    assert pod["spec"]["priorityClassName"] == "coachforge-training"
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-training"
    assert worker["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-training"
    # Without KEDA's API (and not forced) the workers keep their fixed count.
    plain = render(helm_env, "-f", str(VALUES_DIR / "gitops-minio.yaml"), *MONITORING_API)
    assert not by_kind(plain, "ScaledObject")
    assert by_kind(plain, "Deployment")["coachforge-trainer-worker"]["spec"]["replicas"] == 1
    forced = render(helm_env, "-f", str(VALUES_DIR / "gitops-minio.yaml"),
                    "--set", "trainerWorker.autoscaling.assumeApiPresent=true")
    assert by_kind(forced, "ScaledObject")
    proc = helm(helm_env, "template", "x", str(CHART), "--set", "trainerWorker.autoscaling.enabled=true", *KEDA_API,
                check=False)
    assert proc.returncode != 0 and "trainerWorker.autoscaling.prometheusServerAddress is required" in proc.stderr


def test_dashboards_show_gpus_per_engine_and_worker_pod(rendered: dict[str, Docs]) -> None:
    boards = {}
    for doc in rendered["defaults"]:
        if doc["kind"] == "ConfigMap" and "grafana_dashboard" in doc["metadata"]["labels"]:
            boards.update({name: json.loads(text) for name, text in doc["data"].items()})
    for name, pod_regex in (("coachforge-engines.json", ".*engine.*"),
                            ("coachforge-training.json", ".*trainer-worker.*")):
        board = boards[name]
        exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
        for metric in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE"):
            assert any(metric in e and 'pod=~"$gpu_pod"' in e and "pod" in e.split("by (")[1] for e in exprs
                       if "by (" in e), (name, metric)
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["gpu_pod"]["query"] == pod_regex
    training = [t["expr"] for p in boards["coachforge-training.json"]["panels"] for t in p.get("targets", [])]
    assert "coachforge:training_jobs_queued:max" in training


# -- storage, examples, helm test -------------------------------------------------------------------------------

def test_the_registry_keeps_adapters_in_the_bundled_minio(rendered: dict[str, Docs]) -> None:
    docs = rendered["gitops-minio"]
    assert "coachforge-minio" in by_kind(docs, "StatefulSet")
    deployments = by_kind(docs, "Deployment")
    registry = env_of(deployments["coachforge-registry"]["spec"]["template"]["spec"]["containers"][0])
    assert registry["COACHFORGE_REGISTRY_STORAGE_URL"] == "s3://coachforge/registry"
    assert registry["COACHFORGE_REGISTRY_STORAGE_ENDPOINT_URL"] == "http://coachforge-minio.coachforge.svc:9000"
    inference = env_of(deployments["coachforge-inference"]["spec"]["template"]["spec"]["containers"][0])
    assert json.loads(inference["COACHFORGE_INFERENCE_ADAPTER_STORAGE_OPTIONS"]) == {
        "endpoint_url": "http://coachforge-minio.coachforge.svc:9000"}
    for name, deployment in deployments.items():
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        holds = "AWS_SECRET_ACCESS_KEY" in env
        assert holds == (name in ("coachforge-registry", "coachforge-inference")), name
        if holds:
            assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "coachforge-minio",
                                                                     "key": "root-password"}}
    args = by_kind(docs, "StatefulSet")["coachforge-minio"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "coachforge coachforge-artifacts" in args  # both buckets created at start
    (pv,) = by_kind(docs, "PersistentVolume").values()
    assert pv["spec"]["csi"]["nodePublishSecretRef"] == {"name": "coachforge-csi-s3", "namespace": "coachforge"}


def test_example_values_wire_strimzi_and_cloudnativepg(rendered: dict[str, Docs]) -> None:
    assert (EXAMPLES_DIR / "values-strimzi.yaml").is_file() and (EXAMPLES_DIR / "values-cloudnativepg.yaml").is_file()
    strimzi = rendered["strimzi"]
    assert "coachforge-kafka" not in by_kind(strimzi, "StatefulSet")
    env = env_of(by_kind(strimzi, "Deployment")["coachforge-trainer"]["spec"]["template"]["spec"]["containers"][0])
    assert env["COACHFORGE_KAFKA_BOOTSTRAP"] == "coachforge-kafka-bootstrap.kafka.svc:9092"

    cnpg = rendered["cloudnativepg"]
    assert "coachforge-postgresql" not in by_kind(cnpg, "StatefulSet")
    for where, pod in pods(cnpg).items():
        for container in pod["containers"]:
            env = env_of(container)
            if "DATABASE_URL" not in env:
                continue
            assert env["DATABASE_URL"] == "postgresql+psycopg://$(PGUSER):$(PGPASSWORD)@$(PGHOST):$(PGPORT)/$(PGDATABASE)"
            names = [e["name"] for e in container["env"]]
            for var, key in (("PGUSER", "username"), ("PGPASSWORD", "password"), ("PGHOST", "host"),
                             ("PGPORT", "port"), ("PGDATABASE", "dbname")):
                assert env[var] == {"secretKeyRef": {"name": "coachforge-db-app", "key": key}}, where
                assert names.index(var) < names.index("DATABASE_URL"), "defined before it is referenced"


def test_helm_test_asks_the_base_model_through_the_gateway(rendered: dict[str, Docs]) -> None:
    for value_set in ("defaults", "external"):
        (pod,) = by_kind(rendered[value_set], "Pod").values()
        assert hook_phases(pod) == {"test"}
        (container,) = pod["spec"]["containers"]
        env = env_of(container)
        assert env["BASE_URL"] == "http://coachforge-inference:8000"
        assert env["MODEL"] == "SmolLM2-135M-Instruct"
        assert env["API_KEY"] == {"secretKeyRef": {"name": "coachforge-auth", "key": "api-key"}}
        assert "/v1/chat/completions" in container["args"][0]
        assert container["image"].endswith("coachforge/inference:0.1.0")
