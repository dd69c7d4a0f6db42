"""The Helm chart (helm/runstream) lints strictly and renders, for every ci/*-values.yaml, manifests
that run the real CLI and settings correctly; values that break the schema are refused.

Needs the helm binary: the cached one (`bash scripts/helm.sh install`, which scripts/test.sh runs)
or one on PATH; skipped with a message otherwise. No cluster is involved: what Kubernetes would do
with the manifests is checked by asserting on them, and the rendered TOML and args are fed to the
real `load_settings` and CLI parser."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from runstream_services.cli import build_parser
from runstream_services.config import COMPONENTS, load_settings

yaml = pytest.importorskip(
    "yaml", reason="PyYAML is needed to read rendered manifests: pip install -e '.[dev]'"
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/runstream"
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
PRODUCTION = CHART / "examples/production-values.yaml"
SERVER_COMPONENTS = ("ingest", "writer", "query")


def _helm() -> str | None:
    cache = Path(os.environ.get("RUNSTREAM_CACHE_DIR", Path.home() / ".cache/runstream"))
    cached = cache / "bin/helm"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which("helm")


HELM = _helm()
pytestmark = pytest.mark.skipif(
    HELM is None,
    reason="helm not found in ~/.cache/runstream/bin or on PATH: run `bash scripts/helm.sh install`",
)


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    home = Path(os.environ.get("RUNSTREAM_CACHE_DIR", Path.home() / ".cache/runstream")) / "helm"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    proc = subprocess.run([HELM, *args], capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def render(values_file: Path, *extra: str) -> list[dict]:
    out = run_helm("template", "rs", str(CHART), "--namespace", "ml", "-f", str(values_file), *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def component_of(obj: dict) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def deployments(docs: list[dict]) -> dict[str, dict]:
    """The long-running workloads by component: Deployments, and the writers' StatefulSet."""
    kinds = ("Deployment", "StatefulSet")
    return {component_of(d): d for d in docs if d["kind"] in kinds}


def container(deploy: dict) -> dict:
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def config_toml(docs: list[dict]) -> dict:
    (cm,) = by_kind(docs, "ConfigMap").values()
    return tomllib.loads(cm["data"]["runstream.toml"])["server"]


@pytest.fixture(scope="module", params=[p.name for p in CI_FILES] + ["../examples/production-values.yaml"])
def ci_file(request) -> Path:
    return (CHART / "ci" / request.param).resolve()


@pytest.fixture(scope="module")
def rendered(ci_file) -> list[dict]:
    return render(ci_file)


def test_ci_files_exist():
    assert {"default-values.yaml", "minimal-values.yaml", "full-values.yaml"} <= {p.name for p in CI_FILES}


def test_lint_strict(ci_file):
    proc = run_helm("lint", "--strict", str(CHART), "-f", str(ci_file))
    assert "0 chart(s) failed" in proc.stdout


def test_every_pod_runs_non_root_with_a_read_only_root(rendered):
    pods = [
        d["spec"]["template"]["spec"] for d in rendered if d["kind"] in ("Deployment", "StatefulSet", "Job")
    ]
    pods += [d["spec"] for d in by_kind(rendered, "Pod").values()]
    assert pods
    for spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]


def test_server_args_parse_with_the_real_cli(rendered):
    """The args of every server Deployment are accepted by `runstream`'s own parser."""
    parser = build_parser()
    for name, deploy in deployments(rendered).items():
        args = parser.parse_args(container(deploy)["args"])
        if name == "dashboard":
            assert args.command == "dashboard"
            assert args.endpoint == f"rs-runstream-query.ml.svc:{config_toml(rendered)['port']}"
        else:
            assert args.command == "server"
            assert args.bus == "kafka"
            assert set(args.components.split(",")) <= set(COMPONENTS)


def test_components_split_as_configured(ci_file, rendered):
    values = yaml.safe_load(ci_file.read_text())
    query_apart = values.get("query", {}).get("enabled", True)
    deploys = deployments(rendered)
    comps = {name: container(d)["args"][2] for name, d in deploys.items() if name != "dashboard"}
    if query_apart:
        assert comps == {"ingest": "ingest", "writer": "writer", "query": "query"}
    else:
        assert comps == {"ingest": "ingest", "writer": "writer,query"}
    # The query Service always exists and selects the pods that serve queries.
    services = {component_of(s): s for s in by_kind(rendered, "Service").values()}
    selected = services["query"]["spec"]["selector"]["app.kubernetes.io/component"]
    assert selected == ("query" if query_apart else "writer")
    assert "grpc" in {p["name"] for p in services["ingest"]["spec"]["ports"]}


def test_probes_enabled_and_pointing_at_open_ports(rendered):
    for name, deploy in deployments(rendered).items():
        c = container(deploy)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for kind in ("readinessProbe", "livenessProbe"):
            probe = c.get(kind)
            if probe is None:
                continue
            if "grpc" in probe:
                assert probe["grpc"]["port"] == ports["grpc"], (name, kind)
            else:
                assert probe["httpGet"]["port"] in ports, (name, kind)
        assert "readinessProbe" in c, f"{name} has no readiness probe"
    deploys = deployments(rendered)
    assert "grpc" in container(deploys["ingest"])["readinessProbe"]


def test_settings_come_from_configmap_and_secrets_and_validate(rendered, tmp_path):
    """The rendered TOML, the Secret-fed environment and the args together pass the real
    `load_settings` validation; no secret value sits in the ConfigMap or the pod spec."""
    secrets = by_kind(rendered, "Secret")
    (cm,) = by_kind(rendered, "ConfigMap").values()
    config_file = tmp_path / "runstream.toml"
    config_file.write_text(cm["data"]["runstream.toml"])
    for name, deploy in deployments(rendered).items():
        if name == "dashboard":
            continue
        c = container(deploy)
        env = env_of(c)
        assert env["RUNSTREAM_CONFIG"]["value"] == "/etc/runstream/config/runstream.toml"
        volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == "rs-runstream"
        for var in ("RUNSTREAM_CLICKHOUSE_PASSWORD", "RUNSTREAM_S3_ACCESS_KEY", "RUNSTREAM_S3_SECRET_KEY"):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            if ref["name"] == "rs-runstream":
                assert ref["key"] in secrets["rs-runstream"]["data"], var
        dsn = env["RUNSTREAM_CLICKHOUSE_DSN"]["value"]
        assert "$(RUNSTREAM_CLICKHOUSE_PASSWORD)@" in dsn
        # What Kubernetes hands the process after expanding $(VAR):
        process_env = {
            "RUNSTREAM_CLICKHOUSE_DSN": dsn.replace("$(RUNSTREAM_CLICKHOUSE_PASSWORD)", "pw"),
            "RUNSTREAM_S3_ACCESS_KEY": "ak",
            "RUNSTREAM_S3_SECRET_KEY": "sk",
        }
        args = build_parser().parse_args(c["args"])
        settings = load_settings(
            {"components": args.components, "bus": args.bus}, env=process_env, config_file=config_file
        )
        assert settings.bus == "kafka" and settings.artifact_store == "s3"
        assert settings.host == "0.0.0.0"
        assert settings.resolved_clickhouse_dsn.startswith(("http://", "https://"))
        if settings.auth_required:
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert str(Path(settings.api_keys_file).parent) in mounts
    cm_text = cm["data"]["runstream.toml"].lower()
    assert "secret" not in cm_text and "password" not in cm_text


def test_helm_test_pod_calls_ingest_health(rendered, ci_file):
    values = yaml.safe_load(ci_file.read_text())
    pods = by_kind(rendered, "Pod")
    if values.get("tests", {}).get("enabled", True) is False:
        assert not pods
        return
    (pod,) = pods.values()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    script = c["args"][0]
    compile(script, "helm-test", "exec")  # valid Python
    assert "IngestServiceStub" in script and ".Health(" in script
    assert env_of(c)["RUNSTREAM_ENDPOINT"]["value"] == "rs-runstream-ingest.ml.svc:7777"
    ingest_image = container(deployments(rendered)["ingest"])["image"]
    assert c["image"] == ingest_image


def test_default_values_render_the_chart_secret():
    docs = render(CHART / "ci/default-values.yaml")
    secret = by_kind(docs, "Secret")["rs-runstream"]
    assert set(secret["data"]) == {"clickhouse-password", "s3-access-key", "s3-secret-key"}
    assert not by_kind(docs, "ServiceMonitor")


def test_minimal_values_use_existing_secrets_only():
    docs = render(CHART / "ci/minimal-values.yaml")
    assert not by_kind(docs, "Secret"), "every credential comes from an existing Secret"
    env = env_of(container(deployments(docs)["writer"]))
    assert env["RUNSTREAM_CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "runstream-clickhouse",
        "key": "password",
    }
    assert config_toml(docs)["metrics_port"] == 0
    assert "dashboard" not in deployments(docs)


def test_full_values_wire_auth_monitoring_and_images():
    docs = render(CHART / "ci/full-values.yaml")
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    labelled = [
        s for s in by_kind(docs, "Service").values() if s["metadata"]["labels"].get("runstream.dev/metrics")
    ]
    assert {component_of(s) for s in labelled} == set(SERVER_COMPONENTS)
    assert all("metrics" in {p["name"] for p in s["spec"]["ports"]} for s in labelled)
    toml = config_toml(docs)
    assert toml["auth_required"] is True and toml["api_keys_file"] == "/etc/runstream/keys/api-keys.json"
    assert toml["max_inline_artifact_bytes"] == 2097152
    secret = by_kind(docs, "Secret")["rs-runstream"]
    assert "api-keys.json" in secret["data"]
    deploys = deployments(docs)
    assert container(deploys["ingest"])["image"] == "registry.example.com/ml/runstream:0.1.0-ingest"
    assert container(deploys["writer"])["image"] == "registry.example.com/ml/runstream:0.1.0-ci"
    assert env_of(container(deploys["ingest"]))["RUNSTREAM_CLICKHOUSE_DSN"]["value"].startswith(
        "https://runstream:$(RUNSTREAM_CLICKHOUSE_PASSWORD)@clickhouse.db.svc:8443"
    )
    ingest_pod = deploys["ingest"]["spec"]["template"]["spec"]
    assert ingest_pod["tolerations"][0]["key"] == "dedicated"
    assert ingest_pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert deploys["ingest"]["spec"]["template"]["metadata"]["labels"]["tier"] == "ingest"
    assert env_of(container(deploys["ingest"]))["GRPC_VERBOSITY"]["value"] == "ERROR"
    assert ingest_pod["serviceAccountName"] == "runstream-ci"


def render_notes(tmp_path: Path, values_file: Path) -> str:
    """NOTES.txt is only rendered by `helm install`, which needs a cluster even with --dry-run; so a
    copy of the chart wraps the real NOTES.txt in a named template that a ConfigMap includes."""
    chart = tmp_path / "runstream"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates/NOTES.txt").read_text()
    (chart / "templates/NOTES.txt").unlink()
    (chart / "templates/_notes.tpl").write_text('{{- define "notes-check" }}' + notes + "{{- end }}")
    (chart / "templates/notes-check.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes-check}\n"
        'data:\n  notes: {{ include "notes-check" . | toJson }}\n'
    )
    out = run_helm(
        "template", "rs", str(chart), "--namespace", "ml", "-f", str(values_file),
        "--show-only", "templates/notes-check.yaml",
    ).stdout  # fmt: skip
    return yaml.safe_load(out)["data"]["notes"]


def test_notes_print_dashboard_and_ingest_endpoints(tmp_path):
    notes = render_notes(tmp_path, CHART / "ci/default-values.yaml")
    assert "export RUNSTREAM_ENDPOINT=rs-runstream-ingest.ml.svc:7777" in notes
    assert "kubectl port-forward -n ml svc/rs-runstream-dashboard 8501:8501" in notes
    assert "http://127.0.0.1:8501" in notes
    assert "helm test -n ml rs" in notes
    full = render_notes(tmp_path / "full", CHART / "ci/full-values.yaml")
    assert "get svc -n ml rs-runstream-ingest" in full and "loadBalancer" in full  # LoadBalancer ingest
    assert "nodePort" in full and "RUNSTREAM_API_KEY" in full  # NodePort dashboard, auth on


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"kafka": {"bootstrap": ""}}, "/kafka/bootstrap"),
        ({"clickhouse": {"host": ""}}, "/clickhouse/host"),
        ({"s3": {"endpoint": "minio"}}, "/s3/endpoint"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"ingest": {"readinessProbe": {"type": "tcp"}}}, "type"),
        ({"dashboard": {"livenessProbe": {"type": "grpc"}}}, "type"),
        ({"writer": {"podSecurityContext": {"runAsNonRoot": False}}}, "runAsNonRoot"),
        ({"auth": {"required": True}}, "auth"),
        ({"clickhouse": {"password": "p@ss"}}, "/clickhouse/password"),
        ({"ingestt": {"replicaCount": 1}}, "ingestt"),
    ],
)
def test_schema_refuses_bad_values(tmp_path, override, message):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump(override))
    proc = run_helm(
        "template", "rs", str(CHART), "-f", str(CHART / "ci/default-values.yaml"), "-f", str(bad), check=False
    )
    assert proc.returncode != 0, f"helm accepted {override}"
    assert "schema" in proc.stderr and message in proc.stderr, proc.stderr


def test_template_refuses_probe_on_a_closed_port(tmp_path):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump({"server": {"metricsPort": 0}}))
    proc = run_helm(
        "template", "rs", str(CHART), "-f", str(CHART / "ci/default-values.yaml"), "-f", str(bad), check=False
    )
    assert proc.returncode != 0
    assert "server.metricsPort is 0" in proc.stderr


# ---- what a platform team checks before installing (issue 14) ----------------------------------


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def overrides(tmp_path: Path, values: dict, base: Path = CHART / "ci/default-values.yaml") -> list[dict]:
    extra = tmp_path / "override-values.yaml"
    extra.write_text(yaml.safe_dump(values))
    return render(base, "-f", str(extra))


def test_every_container_has_startup_readiness_and_liveness_on_open_ports(rendered):
    """startupProbe holds liveness off while a server connects to its store and Kafka (a slow start
    is not a crash loop); gRPC probes ask grpc_health.py's named services: readiness (store and
    Kafka reachable) and liveness (the process answers)."""
    for name, workload in deployments(rendered).items():
        c = container(workload)
        ports = {p["name"] for p in c["ports"]}
        for kind, service in (
            ("startupProbe", "liveness"),
            ("readinessProbe", "readiness"),
            ("livenessProbe", "liveness"),
        ):
            probe = c.get(kind)
            if probe is None:
                assert kind == "livenessProbe", (name, kind)  # only liveness may be switched off
                continue
            if "grpc" in probe:
                assert probe["grpc"]["service"] == service, (name, kind)
            else:
                assert probe["httpGet"]["port"] in ports, (name, kind)
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, name


def test_writers_are_a_statefulset_of_static_kafka_members(rendered):
    """Stable pod names become the writers' group.instance.id (KIP-345), which the real settings
    loader accepts: a restarted writer takes its partitions back without a group rebalance."""
    writer = deployments(rendered)["writer"]
    assert writer["kind"] == "StatefulSet"
    assert writer["spec"]["podManagementPolicy"] == "Parallel"
    headless = by_kind(rendered, "Service")[writer["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == writer["spec"]["selector"]["matchLabels"]
    env = env_of(container(writer))
    assert env["RUNSTREAM_KAFKA_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    settings = load_settings(
        {"bus": "kafka", "kafka_bootstrap": "k:9092"},
        env={"RUNSTREAM_KAFKA_GROUP_INSTANCE_ID": "rs-runstream-writer-1"},
    )
    assert settings.kafka_group_instance_id == "rs-runstream-writer-1"
    assert not by_kind(rendered, "HorizontalPodAutoscaler").get("rs-runstream-writer")


def test_migrations_run_once_in_a_hook_job_and_servers_do_not_migrate(rendered):
    (job,) = by_kind(rendered, "Job").values()
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    c = pod_spec(job)["containers"][0]
    args = build_parser().parse_args(c["args"])
    assert args.command == "migrate" and args.run.endswith("migrate_command:main")
    env = env_of(c)
    assert env["RUNSTREAM_CLICKHOUSE_DSN"]["value"].startswith(("http://", "https://"))
    password_ref = env["RUNSTREAM_CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]
    # Hooks run before the release's own Secret, ConfigMap and ServiceAccount exist.
    secrets = by_kind(rendered, "Secret")
    if password_ref["name"].endswith("-migrate"):
        hook_secret = secrets[password_ref["name"]]
        assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            annotations["helm.sh/hook-weight"]
        )
        assert password_ref["key"] in hook_secret["data"]
    else:
        assert password_ref["name"] not in secrets, "an existing Secret is used as is"
    assert "volumes" not in pod_spec(job) or all("configMap" not in v for v in pod_spec(job)["volumes"])
    assert pod_spec(job)["serviceAccountName"] != "rs-runstream" or not by_kind(rendered, "ServiceAccount")
    assert config_toml(rendered)["migrate_on_start"] is False


def test_without_the_migration_job_servers_migrate_themselves(tmp_path):
    docs = overrides(tmp_path, {"migrations": {"job": {"enabled": False}}})
    assert not by_kind(docs, "Job")
    assert config_toml(docs)["migrate_on_start"] is True


def test_disruption_budgets_and_autoscalers(tmp_path):
    docs = overrides(
        tmp_path,
        {
            "ingest": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9}},
            "dashboard": {"replicaCount": 1},
        },
    )
    hpas = {component_of(h): h for h in by_kind(docs, "HorizontalPodAutoscaler").values()}
    assert set(hpas) == {"ingest"}
    ingest = deployments(docs)["ingest"]
    assert "replicas" not in ingest["spec"], "the autoscaler owns the replica count"
    target = hpas["ingest"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", ingest["metadata"]["name"])
    assert (hpas["ingest"]["spec"]["minReplicas"], hpas["ingest"]["spec"]["maxReplicas"]) == (3, 9)
    pdbs = {component_of(p): p for p in by_kind(docs, "PodDisruptionBudget").values()}
    # single-pod components get none: a PDB of maxUnavailable 1 over one pod would only block drains
    assert set(pdbs) == {"ingest", "writer", "query"}
    for name, pdb in pdbs.items():
        assert (
            pdb["spec"]["selector"]["matchLabels"]
            == deployments(docs)[name]["spec"]["selector"]["matchLabels"]
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"query": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}})
    )
    proc = run_helm(
        "template", "rs", str(CHART), "-f", str(CHART / "ci/default-values.yaml"), "-f", str(bad), check=False
    )
    assert proc.returncode != 0 and "minReplicas (5) is above maxReplicas (2)" in proc.stderr


def test_pods_spread_and_scratch_space_is_bounded(rendered):
    workloads = [d for d in rendered if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    for w in workloads:
        spec = pod_spec(w)
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), (w["metadata"]["name"], volume["name"])
        if w["kind"] == "Job":
            continue
        spreads = spec["topologySpreadConstraints"]
        assert {s["topologyKey"] for s in spreads} >= {"kubernetes.io/hostname"}
        for spread in spreads:
            assert spread["labelSelector"]["matchLabels"] == w["spec"]["selector"]["matchLabels"]


def test_network_policies_open_exactly_the_served_ports():
    docs = render(PRODUCTION)
    policies = {component_of(p): p for p in by_kind(docs, "NetworkPolicy").values()}
    workloads = deployments(docs)
    assert set(policies) == set(workloads)
    for name, policy in policies.items():
        assert (
            policy["spec"]["podSelector"]["matchLabels"] == workloads[name]["spec"]["selector"]["matchLabels"]
        )
        container_ports = {p["name"] for p in container(workloads[name])["ports"]}
        opened = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
        assert opened == container_ports, name
        assert "Egress" in policy["spec"]["policyTypes"]
        dns = policy["spec"]["egress"][0]["ports"]
        assert {p["port"] for p in dns} == {53}
    grpc_rule = next(r for r in policies["ingest"]["spec"]["ingress"] if r["ports"][0]["port"] == "grpc")
    sources = grpc_rule["from"]
    assert sources[0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "rs"  # helm test pod
    assert sources[1]["namespaceSelector"]["matchLabels"] == {"runstream.dev/training": "true"}
    # the dashboard may call the query service
    dashboard_egress = policies["dashboard"]["spec"]["egress"]
    assert any(rule.get("ports") == [{"port": 7777}] for rule in dashboard_egress)


def test_dashboard_ingress_terminates_tls_and_routes_to_the_dashboard_service():
    docs = render(PRODUCTION)
    (ingress,) = by_kind(docs, "Ingress").values()
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"secretName": "runstream-dashboard-tls", "hosts": ["runstream.ml.example.com"]}
    ]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = by_kind(docs, "Service")[backend["name"]]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert component_of(service) == "dashboard"


def test_alerts_use_only_metrics_the_services_export():
    import re

    from runstream_services.metrics_http import DECLARED

    docs = render(PRODUCTION)
    (rule,) = by_kind(docs, "PrometheusRule").values()
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = rule["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {
        "RunstreamWriterLagHigh",
        "RunstreamIngestErrors",
        "RunstreamTargetDown",
    }
    for r in rules:
        for metric in re.findall(r"\b(runstream_[a-z_]+)\b", r["expr"]):
            assert metric in DECLARED, f"{r['alert']} uses {metric}, which no service exports"
        assert 'namespace="ml"' in r["expr"]


def test_tls_mounts_the_certificate_and_clients_trust_its_ca(tmp_path):
    """tls.enabled: servers get the certificate (and the client CA for mTLS) where the rendered
    settings say, the settings pass the real loader, probes move to the metrics port's HTTP checks
    (the kubelet's gRPC probe cannot speak TLS), and the dashboard and helm test pod resolve the
    CA and client certificate through runstream.tls exactly as the SDK does."""
    from runstream.tls import Tls

    tls = {
        "enabled": True,
        "secretName": "rs-tls",
        "clientCASecret": "rs-clients",
        "clientCertSecret": "rs-dash",
    }
    docs = overrides(tmp_path, {"tls": tls})
    toml = config_toml(docs)
    assert (toml["tls_cert_file"], toml["tls_key_file"]) == (
        "/etc/runstream/tls/tls.crt",
        "/etc/runstream/tls/tls.key",
    )
    assert toml["tls_client_ca_file"] == "/etc/runstream/tls-client-ca/ca.crt"
    for name, workload in deployments(docs).items():
        spec, c = pod_spec(workload), container(workload)
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec["volumes"]}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" not in c[kind], (name, kind)
        if name == "dashboard":
            env = {k: v["value"] for k, v in env_of(c).items() if "value" in v}
            client = Tls.resolve(env=env)
            assert client.enabled and client.ca_file == "/etc/runstream/tls-ca/ca.crt"
            assert volumes[mounts["/etc/runstream/tls-ca"]]["secret"]["secretName"] == "rs-tls"
            assert volumes[mounts["/etc/runstream/tls-client"]]["secret"]["secretName"] == "rs-dash"
            continue
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert volumes[mounts["/etc/runstream/tls"]]["secret"]["secretName"] == "rs-tls"
        assert volumes[mounts["/etc/runstream/tls-client-ca"]]["secret"]["secretName"] == "rs-clients"
    config = tmp_path / "runstream.toml"
    (cm,) = by_kind(docs, "ConfigMap").values()
    config.write_text(cm["data"]["runstream.toml"])
    loaded = load_settings({}, env={"RUNSTREAM_CLICKHOUSE_DSN": "http://u:p@h:8123"}, config_file=config)
    assert loaded.tls_client_ca_file == toml["tls_client_ca_file"]
    (pod,) = by_kind(docs, "Pod").values()
    assert "tls.channel(" in pod["spec"]["containers"][0]["args"][0]
    assert env_of(pod["spec"]["containers"][0])["RUNSTREAM_TLS_CA"]["value"] == "/etc/runstream/tls-ca/ca.crt"


def test_tls_without_a_certificate_secret_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"tls": {"enabled": True}}))
    proc = run_helm(
        "template", "rs", str(CHART), "-f", str(CHART / "ci/default-values.yaml"), "-f", str(bad), check=False
    )
    assert proc.returncode != 0 and "tls.enabled needs tls.secretName" in proc.stderr
