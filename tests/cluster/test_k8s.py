"""The Kubernetes manifests, offline: every kustomize target renders (``kubectl kustomize``), every
rendered object validates against the Kubernetes schemas (kubernetes-validate, strict; the
ServiceMonitor CRD against its vendored structural schema), and ports, probes, grace periods,
metric names and the router's config agree with gsv-serve itself.  The Dockerfiles copy what
exists and expose the same ports."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from server import lb
from server.cli import parse_bundle_arg, build_parser

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
TARGETS = ["base", "overlays/cpu", "overlays/gpu", "overlays/cpu-demo"]
K8S_VERSION = "1.32.0"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (client) is not installed")
    out = {}
    for target in TARGETS:
        r = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{target}: {r.stderr}"
        out[target] = [d for d in yaml.safe_load_all(r.stdout) if d]
    return out


def one(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def serve_args(docs):
    """The gsv-serve container and its arguments as gsv-serve itself parses them."""
    container = one(docs, "Deployment", "gsv-serve")["spec"]["template"]["spec"]["containers"][0]
    return container, build_parser().parse_args(container["args"])


@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(rendered, target):
    import jsonschema
    import kubernetes_validate

    crd_schema = json.loads((K8S / "schemas" / "servicemonitor-monitoring-v1.json").read_text())
    kinds = set()
    for doc in rendered[target]:
        kinds.add(doc["kind"])
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(doc, crd_schema)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"].get("namespace", "gsv") == "gsv" or doc["kind"] == "Namespace"
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor",
            "ConfigMap", "PersistentVolumeClaim"} <= kinds


def test_a_broken_manifest_is_refused_by_the_validator(rendered):
    """The validation above can fail: a misspelt field and a wrong type are caught."""
    import kubernetes_validate

    deployment = json.loads(json.dumps(one(rendered["base"], "Deployment", "gsv-serve")))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 50
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = json.loads(json.dumps(one(rendered["base"], "Deployment", "gsv-serve")))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_ports_probes_and_grace_agree_with_gsv_serve(rendered, target):
    docs = rendered[target]
    container, args = serve_args(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "http": args.http_port, "metrics": args.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # grpc.health.v1 on the gRPC port
        assert container[probe]["grpc"]["port"] == args.port
    assert container["readinessProbe"]["failureThreshold"] == 1
    pod = one(docs, "Deployment", "gsv-serve")["spec"]["template"]["spec"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert args.drain_notice <= args.grace
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + args.grace + args.drain_notice
    assert args.voices == "$(GSV_VOICES_URL)" and container["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "url"
    assert args.voice_key_file.parent.as_posix() == next(
        m["mountPath"] for m in container["volumeMounts"] if m["name"] == "voice-keys")
    models_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "models")
    served = [parse_bundle_arg(b)[1] for b in args.bundle] + ([args.models] if args.models else [])
    assert served and all(path.as_posix().startswith(models_mount) for path in served)
    service = one(docs, "Service", "gsv-serve-replicas")
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS answer per pod
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        name: (port, name) for name, port in ports.items()}
    labels = one(docs, "Deployment", "gsv-serve")["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    monitor = one(docs, "ServiceMonitor", "gsv-serve")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    pdb = one(docs, "PodDisruptionBudget", "gsv-serve")
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())


@pytest.mark.parametrize("target", TARGETS)
def test_the_autoscaler_reads_metrics_the_server_exports(rendered, target):
    from server.metrics import ServerMetrics

    exported = {m.name for m in ServerMetrics().registry.collect()}
    hpa = one(rendered[target], "HorizontalPodAutoscaler", "gsv-serve")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gsv-serve"}
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert names and set(names) <= exported, (names, sorted(exported))
    adapter = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert set(names) <= served
    for rule in adapter["rules"]["custom"]:
        assert re.match(r"(\w+)\{", rule["seriesQuery"]).group(1) in exported
    _, args = serve_args(rendered[target])
    live = next(m for m in hpa["spec"]["metrics"] if m["pods"]["metric"]["name"] == "tts_ar_live_rows")
    assert 0 < float(live["pods"]["target"]["averageValue"]) <= args.max_live  # a target the replicas can reach


def test_the_router_config_is_the_template_rendered_for_kubernetes(rendered, tmp_path):
    docs = rendered["base"]
    config = one(docs, "ConfigMap", next(d["metadata"]["name"] for d in docs
                                         if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("gsv-lb")))
    assert config["data"]["nginx.conf"] == lb.render(lb.k8s_config()) == lb.K8S_RENDERED.read_text()
    service = one(docs, "Service", "gsv-serve-replicas")
    namespace = one(docs, "Namespace", "gsv")["metadata"]["name"]
    assert lb.K8S_REPLICAS == f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert (lb.GRPC_PORT, lb.HTTP_PORT, lb.METRICS_PORT) == (ports["grpc"], ports["http"], ports["metrics"])
    nginx = one(docs, "Deployment", "gsv-lb")["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in nginx["ports"]} == {"grpc": lb.LB_GRPC_PORT, "http": lb.LB_HTTP_PORT}
    assert "grpc_pass grpc://gsv_grpc;" in config["data"]["nginx.conf"]
    assert f"listen {lb.LB_GRPC_PORT} http2;" in config["data"]["nginx.conf"]
    assert nginx["readinessProbe"]["httpGet"]["path"] == "/lb-healthz"
    # the same template, rendered for local addresses, passes nginx's own check (`resolve` and the
    # cluster DNS name need a cluster)
    local = lb.LocalNginx(tmp_path / "lb")
    local.write(lb.LbConfig("127.0.0.1:1", "127.0.0.1:2", ["127.0.0.1:3"], ["127.0.0.1:4"], prefix=local.prefix))
    try:
        local._run("-t", "-q")
    except Exception as e:  # nginx missing and not installable: say so, do not pass silently
        if shutil.which("nginx") is None:
            pytest.skip(f"nginx not available: {e}")
        raise


def test_gpu_overlay_requests_a_gpu_and_the_tensorrt_backend(rendered):
    container, args = serve_args(rendered["overlays/gpu"])
    assert args.backend == "trt" and args.device == "cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-gpu")
    cpu, cpu_args = serve_args(rendered["overlays/cpu"])
    assert cpu_args.backend is None and "nvidia.com/gpu" not in cpu["resources"]["limits"]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_copy_what_exists_and_expose_the_server_ports(name):
    text = (REPO / name).read_text()
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / src).exists(), src
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}
    assert exposed == {lb.GRPC_PORT, lb.HTTP_PORT, lb.METRICS_PORT}
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    args = build_parser().parse_args(cmd)
    assert (args.port, args.http_port, args.metrics_port) == (lb.GRPC_PORT, lb.HTTP_PORT, lb.METRICS_PORT)
    assert re.search(r'^ENTRYPOINT \["gsv-serve"\]$', text, re.M)
    if name.endswith("gpu"):
        assert args.backend == "trt" and "cuda" in re.search(r"^FROM (\S+)", text, re.M).group(1)
