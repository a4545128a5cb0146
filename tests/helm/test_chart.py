"""Tests of the Helm chart in helm/aegis.

The chart is rendered and linted by the real Helm (Go SDK, embedded in the PyPI
package helm-python-sdk), which also applies values.schema.json exactly as
`helm install` does. Every rendered manifest of a core Kubernetes kind is
validated against the Kubernetes OpenAPI schemas shipped inside the
kubernetes-validate package (strict: unknown fields fail; offline).

Run: scripts/test-helm.sh
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "aegis"
ALL_OPTIONS = Path(__file__).with_name("values-all-options.yaml")
KUBE_VERSION = "1.30"
RELEASE = "aegis"
NAMESPACE = "aegis"

JOB_NAMES = (
    "RescanQueueJob RescanJob ExceptionJob TicketingJob ScanSyncJob ScanCloseJob BulkUpdateJob "
    "VulnSyncJob CloudSyncJob AssetSyncJob CISRescanJob TicketSyncJob CloudDecommissionJob "
    "ImageRescanJob DiagnosticJob"
).split()

# Custom resources: not in the core Kubernetes schemas that kubernetes-validate
# ships, so they are not schema-validated; test_crd_objects_are_well_formed
# checks their structure instead.
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
SECRET_ENV = {"AEGIS_DATABASE_URL", "AEGIS_AMQP_URL", "AEGIS_REDIS_URL", "AEGIS_ENCRYPTION_KEY"}


# ---------------------------------------------------------------- helpers


def all_options() -> dict:
    return yaml.safe_load(ALL_OPTIONS.read_text())


def render(values: dict | None = None) -> dict[str, str]:
    """Renders the chart as `helm install` would; returns template path -> text."""
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(manifests: dict[str, str]) -> list[dict]:
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                doc["_template"] = path
                out.append(doc)
    return out


def strip(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    obj.pop("_template", None)
    if not obj["metadata"]["annotations"]:
        del obj["metadata"]["annotations"]
    return obj


def of_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {[o['metadata']['name'] for o in of_kind(objs, kind)]}"
    return found[0]


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def is_hook(obj: dict) -> bool:
    return "helm.sh/hook" in obj["metadata"]["annotations"]


def workloads(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] in ("Deployment", "Job")]


# The two value sets every structural test runs against.
VALUE_SETS = {
    "defaults": {},
    "all-options": all_options(),
    "all-options+existingSecret": {
        **all_options(),
        "secrets": {**all_options()["secrets"], "existingSecret": "aegis-credentials"},
    },
}


@pytest.fixture(scope="module", params=list(VALUE_SETS), ids=list(VALUE_SETS))
def rendered(request):
    values = VALUE_SETS[request.param]
    return request.param, values, objects(render(values))


# ---------------------------------------------------------------- lint and schemas


@pytest.mark.parametrize("name", ["defaults", "all-options"])
def test_chart_lints_clean(name):
    report = helm.lint(str(CHART), VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_every_core_manifest_is_valid_for_kubernetes(rendered):
    _, _, objs = rendered
    assert objs
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue  # custom resources: see test_crd_objects_are_well_formed
        try:
            kubernetes_validate.validate(strip(obj), KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{obj['_template']}: {obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}")


def test_the_kubernetes_validation_catches_a_bad_field():
    # Control for the test above: strict schemas, shipped in the package (no network).
    objs = objects(render())
    deployment = strip(named(objs, "Deployment", "aegis-coordinator"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_every_object_is_of_a_known_kind(rendered):
    # Guards the CRD skip above: anything else must be schema-validated.
    _, _, objs = rendered
    core = {"ConfigMap", "Secret", "ServiceAccount", "Deployment", "Job", "Service",
            "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for obj in objs:
        assert obj["kind"] in core or (obj["apiVersion"], obj["kind"]) in CRD_KINDS, obj["kind"]


def test_names_are_unique_per_kind(rendered):
    _, _, objs = rendered
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), keys


@pytest.mark.parametrize(
    "values, message",
    [
        ({"worker": {"concurency": 4}}, "additional properties 'concurency' not allowed"),
        ({"coordinater": {"replicas": 3}}, "additional properties 'coordinater' not allowed"),
        ({"worker": {"autoscaling": {"keda": {"enable": True}}}}, "'enable' not allowed"),
        ({"worker": {"pools": [{"name": "x", "jobs": ["TicketJob"]}]}}, "value must be one of"),
        ({"worker": {"pools": [{"name": "Bad_Name"}]}}, "does not match pattern"),
        ({"secrets": {"databaseUrl": "postgres://db/aegis"}}, "does not match pattern"),
        ({"otel": {"sampler": "sometimes"}}, "value must be one of"),
        ({"coordinator": {"pollInterval": "soon"}}, "does not match pattern"),
        ({"securityContext": {"readOnlyRootFileSystem": True}}, "'readOnlyRootFileSystem' not allowed"),
    ],
)
def test_a_values_typo_is_rejected_by_the_schema(values, message):
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert message in str(err.value), str(err.value)
    assert "- at '" in str(err.value)  # names where the bad key is


def test_schema_forbids_unknown_keys_at_every_level():
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    open_objects = {"/properties/global"}  # Helm's own globals, for use as a subchart

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and path not in open_objects:
                assert node.get("additionalProperties") is False, f"{path} allows unknown keys"
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(schema, "")
    assert schema["additionalProperties"] is False


def test_values_yaml_documents_every_key():
    # Every key of values.yaml has a comment: on the line above it or at its end.
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not m:
            continue
        j = i - 1
        while j >= 0 and lines[j].strip() == "":
            j -= 1
        above = lines[j].strip() if j >= 0 else ""
        if not (above.startswith("#") or " # " in line):
            undocumented.append(f"{i + 1}: {line.strip()}")
    assert not undocumented, "values.yaml keys without a comment:\n" + "\n".join(undocumented)


# ---------------------------------------------------------------- security


def test_pods_run_non_root_read_only_without_privileges(rendered):
    _, _, objs = rendered
    for w in workloads(objs):
        spec = pod_spec(w)
        assert spec["securityContext"]["runAsNonRoot"] is True, w["metadata"]["name"]
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["runAsUser"] != 0
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc.get("privileged", False) is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert not sc["capabilities"].get("add")
            # A read-only root filesystem still needs a writable /tmp.
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
            assert c["resources"]["requests"]["memory"]


def test_credentials_are_never_in_a_configmap(rendered):
    name, values, objs = rendered
    secrets = values.get("secrets", {})
    secret_values = [v for k, v in secrets.items() if k.endswith("Url") or k == "encryptionKey"]
    secret_values = [v for v in secret_values if v]
    for cm in of_kind(objs, "ConfigMap"):
        text = yaml.safe_dump(cm["data"])
        assert not SECRET_ENV & set(cm["data"]), f"{name}: credentials key in ConfigMap"
        assert "AEGIS_ENCRYPTION_KEY_FILE" not in cm["data"]
        for v in secret_values:
            assert v not in text, f"{name}: a credential leaked into ConfigMap {cm['metadata']['name']}"
        assert not re.search(r"://[^/\s\"]*:[^@/\s\"]*@", text), "a URL with a password in a ConfigMap"
    # And they are read from the Secret in every workload.
    for w in workloads(objs):
        for c in pod_spec(w)["containers"]:
            env = env_of(c)
            assert env["AEGIS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            for var in SECRET_ENV & set(env):
                assert "value" not in env[var], f"{var} inline in {w['metadata']['name']}"
                assert "secretKeyRef" in env[var]["valueFrom"]


def test_the_secret_holds_the_credentials_unless_an_existing_one_is_named(rendered):
    name, values, objs = rendered
    secrets = [s for s in of_kind(objs, "Secret") if not is_hook(s)]
    existing = values.get("secrets", {}).get("existingSecret")
    if existing:
        assert secrets == []
        for w in workloads(objs):
            for c in pod_spec(w)["containers"]:
                for var in SECRET_ENV & set(env_of(c)):
                    assert env_of(c)[var]["valueFrom"]["secretKeyRef"]["name"] == existing
        return
    (secret,) = secrets
    keys = {"databaseUrl": "AEGIS_DATABASE_URL", "amqpUrl": "AEGIS_AMQP_URL", "redisUrl": "AEGIS_REDIS_URL"}
    keys.update(values.get("secrets", {}).get("keys", {}))
    for field in ("databaseUrl", "amqpUrl", "redisUrl"):
        assert keys[field] in secret["stringData"]
    if values.get("secrets", {}).get("encryptionKey"):
        assert secret["stringData"][keys["encryptionKey"]] == values["secrets"]["encryptionKey"]


def test_keyring_can_be_mounted_as_a_file():
    objs = objects(render(all_options()))
    for w in workloads(objs):
        if w["kind"] == "Job":
            continue
        (c,) = pod_spec(w)["containers"]
        env = env_of(c)
        assert "AEGIS_ENCRYPTION_KEY" not in env
        assert env["AEGIS_ENCRYPTION_KEY_FILE"]["value"] == "/etc/aegis/keyring/encryption-key"
        mount = next(m for m in c["volumeMounts"] if m["name"] == "keyring")
        assert mount["readOnly"] is True and mount["mountPath"] == "/etc/aegis/keyring"
        vol = next(v for v in pod_spec(w)["volumes"] if v["name"] == "keyring")
        assert vol["secret"]["items"] == [{"key": "encryption-key", "path": "encryption-key"}]
    defaults = objects(render({"secrets": {"encryptionKey": "k1:q83vEjRWFcGUT1kNNZLtPpQcHGTXtwI2jxAIKbIsMHw="}}))
    coordinator = named(defaults, "Deployment", "aegis-coordinator")
    assert env_of(pod_spec(coordinator)["containers"][0])["AEGIS_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "AEGIS_ENCRYPTION_KEY"


# ---------------------------------------------------------------- workloads


def test_probes_use_the_health_endpoints(rendered):
    _, values, objs = rendered
    port = values.get("config", {}).get("httpPort", 9090)
    for d in of_kind(objs, "Deployment"):
        (c,) = pod_spec(d)["containers"]
        assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        startup = values.get("probes", {}).get("startup", {}).get("enabled", True)
        assert ("startupProbe" in c) == startup
        if startup:
            assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    (cm,) = of_kind(objs, "ConfigMap")
    assert cm["data"]["AEGIS_HTTP_ADDR"] == f"0.0.0.0:{port}"


def test_coordinators_are_replicated_and_covered_by_a_pdb(rendered):
    _, values, objs = rendered
    fullname = values.get("fullnameOverride", "aegis")
    d = named(objs, "Deployment", f"{fullname}-coordinator")
    assert d["spec"]["replicas"] == values.get("coordinator", {}).get("replicas", 2) >= 2
    assert pod_spec(d)["containers"][0]["command"] == ["aegis-coordinator"]
    pdb = named(objs, "PodDisruptionBudget", f"{fullname}-coordinator")
    assert pdb["spec"]["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]


def test_workers_drain_within_their_termination_grace(rendered):
    _, _, objs = rendered
    workers = [d for d in of_kind(objs, "Deployment") if pod_spec(d)["containers"][0]["command"] == ["aegis-worker"]]
    assert workers
    for d in workers:
        env = env_of(pod_spec(d)["containers"][0])
        grace = int(env["AEGIS_SHUTDOWN_GRACE"]["value"].rstrip("s"))
        assert pod_spec(d)["terminationGracePeriodSeconds"] > grace
        assert env["AEGIS_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert int(env["AEGIS_WORKER_CONCURRENCY"]["value"]) >= 1


def test_each_pool_is_its_own_deployment_with_its_jobs():
    objs = objects(render(all_options()))
    jobs = {}
    for d in of_kind(objs, "Deployment"):
        if d["metadata"]["name"].startswith("aegis-prod-worker-"):
            pool = d["metadata"]["labels"]["aegis/worker-pool"]
            assert d["spec"]["selector"]["matchLabels"]["aegis/worker-pool"] == pool
            jobs[pool] = env_of(pod_spec(d)["containers"][0])["AEGIS_WORKER_JOBS"]["value"].split(",")
    assert set(jobs) == {"general", "ticketing", "rescan", "diagnostic"}
    assert jobs["ticketing"] == ["TicketingJob", "TicketSyncJob"]
    assert jobs["diagnostic"] == ["DiagnosticJob"]
    # The pool without a list takes every job no other pool lists: each job has exactly one pool.
    consumed = [j for js in jobs.values() for j in js]
    assert sorted(consumed) == sorted(JOB_NAMES)
    # Pool overrides win, including false (sprig's merge would drop it).
    diagnostic = named(objs, "Deployment", "aegis-prod-worker-diagnostic")
    assert diagnostic["spec"]["replicas"] == 1
    assert not [p for p in of_kind(objs, "PodDisruptionBudget") if p["metadata"]["name"].endswith("-diagnostic")]
    rescan = named(objs, "Deployment", "aegis-prod-worker-rescan")
    assert pod_spec(rescan)["terminationGracePeriodSeconds"] == 630


def test_the_default_pool_runs_every_job():
    objs = objects(render())
    d = named(objs, "Deployment", "aegis-worker-default")
    assert env_of(pod_spec(d)["containers"][0])["AEGIS_WORKER_JOBS"]["value"] == ""


def test_pool_validation_names_the_problem():
    with pytest.raises(helm.HelmError, match="used twice"):
        render({"worker": {"pools": [{"name": "a"}, {"name": "a"}]}})
    with pytest.raises(helm.HelmError, match="needs resources.requests.cpu"):
        render({"worker": {"resources": {"requests": {"cpu": None}}}})  # null removes a default
    with pytest.raises(helm.HelmError, match="minReplicas must be at least 1"):
        render({"worker": {"autoscaling": {"minReplicas": 0}}})
    with pytest.raises(helm.HelmError, match="config.extra.AEGIS_DATABASE_URL"):
        render({"config": {"extra": {"AEGIS_DATABASE_URL": "mysql://x"}}})


# ---------------------------------------------------------------- migration hook


def test_migration_runs_as_a_pre_install_pre_upgrade_hook(rendered):
    _, values, objs = rendered
    (job,) = of_kind(objs, "Job")
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in ann["helm.sh/hook-delete-policy"]
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    assert c["command"] == ["aegis", "migrate"]
    # The hook runs before the release's own objects exist: whatever it reads must be a hook
    # created earlier (lower weight), or something that exists before the install.
    weight = int(ann["helm.sh/hook-weight"])
    secret_name = env_of(c)["AEGIS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
    existing = values.get("secrets", {}).get("existingSecret")
    if existing:
        assert secret_name == existing
    else:
        hook_secret = named(objs, "Secret", secret_name)
        assert is_hook(hook_secret)
        assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight
        assert set(hook_secret["stringData"]) == {env_of(c)["AEGIS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"]}
    sa = named(objs, "ServiceAccount", spec["serviceAccountName"])
    assert is_hook(sa) and int(sa["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight
    assert "helm.sh/hook" in sa["metadata"]["annotations"]


def test_migration_can_be_turned_off():
    objs = objects(render({"migration": {"enabled": False}}))
    assert not of_kind(objs, "Job") and not [o for o in objs if is_hook(o)]


# ---------------------------------------------------------------- autoscaling


def test_hpa_on_cpu_by_default_and_no_keda():
    objs = objects(render())
    (hpa,) = of_kind(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "aegis-worker-default"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "replicas" not in named(objs, "Deployment", "aegis-worker-default")["spec"]  # the HPA owns it
    assert not [o for o in objs if o["apiVersion"].startswith("keda.sh/")]


def test_keda_objects_only_when_enabled():
    off = objects(render({"worker": {"autoscaling": {"enabled": False}}}))
    assert not of_kind(off, "HorizontalPodAutoscaler")
    assert not [o for o in off if o["apiVersion"].startswith("keda.sh/")]
    assert named(off, "Deployment", "aegis-worker-default")["spec"]["replicas"] == 2

    on = objects(render({"worker": {"autoscaling": {"keda": {"enabled": True}}}}))
    assert not of_kind(on, "HorizontalPodAutoscaler")  # KEDA makes its own
    (so,) = of_kind(on, "ScaledObject")
    (auth,) = of_kind(on, "TriggerAuthentication")
    assert so["spec"]["scaleTargetRef"]["name"] == "aegis-worker-default"
    rabbit = [t for t in so["spec"]["triggers"] if t["type"] == "rabbitmq"]
    # protocol amqp: one QueueLength trigger per queue of the pool (all fifteen here).
    assert sorted(t["metadata"]["queueName"] for t in rabbit) == sorted(f"aegis.jobs.{j}" for j in JOB_NAMES)
    for t in rabbit:
        assert t["metadata"]["mode"] == "QueueLength" and t["metadata"]["protocol"] == "amqp"
        assert t["metadata"]["value"] == "16"  # the pool's concurrency
        assert t["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert len({t["name"] for t in so["spec"]["triggers"]}) == len(so["spec"]["triggers"])
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "host", "name": "aegis", "key": "AEGIS_AMQP_URL"}]


def test_crd_objects_are_well_formed():
    # ScaledObject, TriggerAuthentication and ServiceMonitor are custom resources whose schemas
    # kubernetes-validate does not ship; check the fields KEDA and the Prometheus Operator need.
    values = all_options()
    objs = objects(render(values))
    deployments = {d["metadata"]["name"] for d in of_kind(objs, "Deployment")}
    scaled = {so["metadata"]["name"]: so for so in of_kind(objs, "ScaledObject")}
    assert set(scaled) == {"aegis-prod-worker-general", "aegis-prod-worker-ticketing"}
    (auth,) = of_kind(objs, "TriggerAuthentication")
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "host", "name": "rabbitmq-keda", "key": "management-url"}]
    for name, so in scaled.items():
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] == name in deployments
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
        assert set(spec) <= {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount", "advanced", "triggers"}
        for t in spec["triggers"]:
            assert set(t) <= {"type", "name", "metadata", "authenticationRef", "metricType"}
            assert all(isinstance(v, str) for v in t["metadata"].values()), t  # KEDA metadata is map[string]string
    # protocol http: one trigger summing the pool's queues, names prefixed by AEGIS_NAMESPACE.
    (q,) = [t for t in scaled["aegis-prod-worker-ticketing"]["spec"]["triggers"] if t["type"] == "rabbitmq"]
    assert q["metadata"]["protocol"] == "http" and q["metadata"]["operation"] == "sum" and q["metadata"]["useRegex"] == "true"
    pattern = re.compile(q["metadata"]["queueName"])
    assert pattern.match("prod.aegis.jobs.TicketingJob") and pattern.match("prod.aegis.jobs.TicketSyncJob")
    assert not pattern.match("prod.aegis.jobs.RescanJob") and not pattern.match("prodXaegis.jobs.TicketingJob")
    assert q["metadata"]["value"] == "4"
    general = [t["type"] for t in scaled["aegis-prod-worker-general"]["spec"]["triggers"]]
    assert general == ["rabbitmq", "cpu", "prometheus"]
    # The HPA pool keeps its HPA; KEDA pools have none (two autoscalers would fight).
    assert [h["metadata"]["name"] for h in of_kind(objs, "HorizontalPodAutoscaler")] == ["aegis-prod-worker-rescan"]

    (sm,) = of_kind(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "5s"}]
    services = of_kind(objs, "Service")
    for svc in services:
        assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
        assert svc["spec"]["ports"][0]["name"] == "http"


def test_no_servicemonitor_by_default():
    assert not of_kind(objects(render()), "ServiceMonitor")


# ---------------------------------------------------------------- tracing and settings


def test_tracing_settings_point_at_the_collector():
    objs = objects(render(all_options()))
    (cm,) = of_kind(objs, "ConfigMap")
    assert cm["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger-collector.observability.svc:4318"
    assert cm["data"]["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert cm["data"]["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    assert cm["data"]["AEGIS_NAMESPACE"] == "prod"
    names = {}
    for d in of_kind(objs, "Deployment"):
        names[d["metadata"]["name"]] = env_of(pod_spec(d)["containers"][0])["OTEL_SERVICE_NAME"]["value"]
    assert names.pop("aegis-prod-coordinator") == "aegis-prod-coordinator"
    assert set(names.values()) == {"aegis-prod-worker"}
    off = objects(render())
    (cm,) = of_kind(off, "ConfigMap")
    assert not [k for k in cm["data"] if k.startswith("OTEL_")]


def test_settings_changes_roll_the_pods():
    a = named(objects(render()), "Deployment", "aegis-coordinator")
    b = named(objects(render({"coordinator": {"pollInterval": "2s"}})), "Deployment", "aegis-coordinator")
    key = "checksum/config"
    assert a["spec"]["template"]["metadata"]["annotations"][key] != b["spec"]["template"]["metadata"]["annotations"][key]


def test_notes_tell_how_to_submit_watch_and_trace_a_diagnostic_job():
    notes = render(all_options())["aegis/templates/NOTES.txt"]
    assert "aegis job submit --queue --job DiagnosticJob" in notes
    assert "aegis job wait" in notes
    assert "job_id=<ID>" in notes and "aegis-prod-worker" in notes
    assert "WARNING" not in notes
    default_notes = render()["aegis/templates/NOTES.txt"]
    assert "WARNING: secrets.databaseUrl is the chart's placeholder" in default_notes
