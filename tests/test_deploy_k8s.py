"""Kubernetes manifests, checked offline: every overlay renders with `kubectl kustomize`, every object
validates against the Kubernetes JSON schemas (kubernetes-validate, strict), and the objects agree with
each other and with the services' settings classes (names, ports, selectors, targets, policies)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from couturier.services.common.config import SETTINGS_BY_SERVICE, load_settings
from couturier.services.common.models import ALL_MODELS

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
KUBECTL = shutil.which("kubectl")
#: the oldest Kubernetes the manifests support (docs/deployment.md) and a current one
K8S_VERSIONS = ("1.29", "1.33")
NAMESPACE = "couturier"
#: Secrets an operator creates by hand in production (never committed): name -> keys
EXTERNAL_SECRETS = {"milvus-credentials": {"token"}}
SERVICE_UID = 10001  # docker/service.Dockerfile
TRITON_UID = 1000  # triton-server in the NGC image

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (needed for `kubectl kustomize`)")

Obj = dict[str, Any]


def kustomize(path: Path) -> list[Obj]:
    result = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)  # type: ignore[list-item]
    assert result.returncode == 0, result.stderr
    return [o for o in yaml.safe_load_all(result.stdout) if o]


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    """base, both overlays, and prod-gpu with the canary component added as docs/deployment.md says."""
    copy_root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy_root)
    with (copy_root / "overlays" / "prod-gpu" / "kustomization.yaml").open("a") as overlay:
        overlay.write("components:\n  - ../../components/canary\n")
    return {
        "base": kustomize(K8S / "base"),
        "dev-cpu": kustomize(K8S / "overlays" / "dev-cpu"),
        "prod-gpu": kustomize(K8S / "overlays" / "prod-gpu"),
        "prod-gpu+canary": kustomize(copy_root / "overlays" / "prod-gpu"),
    }


OVERLAYS = ("dev-cpu", "prod-gpu", "prod-gpu+canary")


def milvus_policies() -> list[Obj]:
    return [o for o in yaml.safe_load_all((K8S / "milvus" / "networkpolicy.yaml").read_text()) if o]


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_templates(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for dep in of_kind(objs, "Deployment"):
        yield dep, dep["spec"]["template"]


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions In/NotIn/Exists/DoesNotExist) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def service_key(container: Obj) -> str | None:
    """The `couturier serve <key>` a container runs (image ENTRYPOINT `couturier serve`, key in args)."""
    args = container.get("args") or []
    return args[0] if container.get("command") is None and args and args[0] in SETTINGS_BY_SERVICE else None


def service_containers(objs: list[Obj]) -> Iterator[tuple[Obj, Obj, str]]:
    for dep, template in pod_templates(objs):
        for container in template["spec"]["containers"]:
            key = service_key(container)
            if key is not None:
                yield dep, container, key


def container_env(objs: list[Obj], container: Obj) -> dict[str, str]:
    """The environment a container gets from its envFrom ConfigMaps and env (secrets as placeholders)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        assert set(source) == {"configMapRef"}, f"unexpected envFrom {source}"
        env.update(named(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            secrets = [s for s in of_kind(objs, "Secret") if s["metadata"]["name"] == name]
            if secrets:
                assert key in secrets[0].get("data", {}), f"Secret {name} has no key {key}"
            else:
                assert key in EXTERNAL_SECRETS.get(name, set()), (
                    f"Secret {name}/{key} is neither rendered nor documented"
                )
            env[item["name"]] = "user:secret"
        elif "configMapKeyRef" in ref:
            name, key = ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
            env[item["name"]] = named(objs, "ConfigMap", name)["data"][key]
        else:
            raise AssertionError(f"unsupported env source {ref}")
    return env


def container_ports(container: Obj) -> dict[str, int]:
    return {p.get("name", str(p["containerPort"])): p["containerPort"] for p in container.get("ports") or []}


def port_exists(container: Obj, port: int | str) -> bool:
    ports = container_ports(container)
    return port in ports if isinstance(port, str) else port in ports.values()


# -- rendering and schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_the_kubernetes_schema(
    renders: dict[str, list[Obj]], overlay: str, version: str
) -> None:
    import kubernetes_validate

    objs = renders[overlay]
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {NAMESPACE}
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)  # raises on unknown fields and bad types
    for obj in milvus_policies():
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_check_catches_a_typo() -> None:
    import kubernetes_validate

    deployment = next(d for d in of_kind(kustomize(K8S / "base"), "Deployment") if d["metadata"]["name"] == "scoring")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = broken["spec"]["template"]["spec"][
        "containers"
    ][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# -- cross references --------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_that_have_their_target_ports(renders: dict[str, list[Obj]], overlay: str) -> None:
    objs = renders[overlay]
    for service in of_kind(objs, "Service"):
        pods = [
            t
            for _, t in pod_templates(objs)
            if matches({"matchLabels": service["spec"]["selector"]}, t["metadata"]["labels"])
        ]
        assert pods, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            for template in pods:
                assert any(port_exists(c, port["targetPort"]) for c in template["spec"]["containers"]), (
                    f"Service {service['metadata']['name']} port {port['targetPort']} is no container port"
                )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_container_ports(renders: dict[str, list[Obj]], overlay: str) -> None:
    for dep, template in pod_templates(renders[overlay]):
        for container in template["spec"]["containers"]:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind)
                if probe is None:
                    continue
                handler = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
                assert handler is not None, f"{dep['metadata']['name']} {kind} has no grpc/httpGet/tcpSocket"
                assert port_exists(container, handler["port"]), (
                    f"{dep['metadata']['name']} {kind} port {handler['port']}"
                )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_config_is_real_settings_with_matching_ports(
    renders: dict[str, list[Obj]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = renders[overlay]
    seen = set()
    for dep, container, key in service_containers(objs):
        seen.add(key)
        cls = SETTINGS_BY_SERVICE[key]
        prefix = f"COUTURIER_{key.upper()}_"
        env = container_env(objs, container)
        for name in env:
            assert name.startswith(prefix), f"{dep['metadata']['name']}: {name} is not a {key} setting"
            assert name[len(prefix) :].lower() in cls.model_fields, (
                f"{dep['metadata']['name']}: {name} is no field of {cls.__name__}"
            )
        for name in [n for n in os.environ if n.startswith("COUTURIER_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = load_settings(key)  # every value parses (ports, JSON pins, enums)
        assert settings.host == "0.0.0.0"
        assert settings.port == cls.model_fields["port"].default, f"{key} runs on a non-default port"
        assert container_ports(container)["grpc"] == settings.port
        assert container_ports(container)["metrics"] == settings.metrics_port
        assert container["readinessProbe"]["grpc"]["port"] == settings.port
        assert settings.log_format == "json" and settings.max_connection_age_s
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert (
            annotations["prometheus.io/scrape"] == "true"
            and int(annotations["prometheus.io/port"]) == settings.metrics_port
        )
        if hasattr(settings, "inference_backend"):
            assert settings.inference_backend == "triton"
    assert seen == set(SETTINGS_BY_SERVICE)


def parse_target(target: str) -> tuple[bool, str, int]:
    """(dns scheme?, host, port) of a gRPC target ``[dns:///]host:port``."""
    dns = target.startswith("dns:///")
    host, _, port = target.removeprefix("dns:///").rpartition(":")
    return dns, host, int(port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_targets_name_existing_services_and_ports(renders: dict[str, list[Obj]], overlay: str) -> None:
    objs = renders[overlay]
    services = {(s["metadata"]["name"], s["metadata"]["namespace"]): s for s in of_kind(objs, "Service")}
    milvus_port = yaml.safe_load((K8S / "milvus" / "values.yaml").read_text())["service"]["port"]
    checked: set[tuple[str, str]] = set()
    for _dep, container, key in service_containers(objs):
        env = container_env(objs, container)
        for name, value in env.items():
            field = name.removeprefix(f"COUTURIER_{key.upper()}_").lower()
            if field.endswith("_target") or field == "triton_url":
                dns, host, port = parse_target(value)
                match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", host)
                assert match, f"{name}={value}: use the Service's cluster DNS name"
                service = services.get((match[1], match[2]))
                assert service is not None, f"{name}={value}: no Service {match[1]} in {match[2]}"
                assert port in [p["port"] for p in service["spec"]["ports"]], (
                    f"{name}={value}: Service has no port {port}"
                )
                if field.endswith("_target"):  # couturier services: client-side balancing over every pod
                    peer = field.removesuffix("_target")
                    assert dns and service["spec"].get("clusterIP") == "None", (
                        f"{name} must be dns:/// to a headless Service"
                    )
                    assert port == SETTINGS_BY_SERVICE[peer].model_fields["port"].default
                checked.add((key, field))
            if field == "milvus_uri":
                assert value == f"http://milvus.milvus.svc.cluster.local:{milvus_port}", value
                checked.add((key, field))
    assert checked == {
        ("scoring", "triton_url"),
        ("scoring", "milvus_uri"),
        ("latent", "triton_url"),  # latent calls no other couturier service
        ("retrieval", "triton_url"),
        ("retrieval", "milvus_uri"),
        ("orchestrator", "scoring_target"),
        ("orchestrator", "latent_target"),
        ("orchestrator", "retrieval_target"),
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpas_and_pdbs_target_existing_workloads(renders: dict[str, list[Obj]], overlay: str) -> None:
    objs = renders[overlay]
    deployments = {d["metadata"]["name"]: d for d in of_kind(objs, "Deployment")}
    for hpa in of_kind(objs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments, ref
        target = deployments[ref["name"]]
        assert "replicas" not in target["spec"], f"{ref['name']}: the HPA owns replicas; a fixed count fights it"
        for container in target["spec"]["template"]["spec"]["containers"]:
            assert container["resources"]["requests"]["cpu"], "CPU utilisation needs a CPU request"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(objs, "HorizontalPodAutoscaler")} == set(
        SETTINGS_BY_SERVICE
    )
    for pdb in of_kind(objs, "PodDisruptionBudget"):
        assert any(matches(pdb["spec"]["selector"], t["metadata"]["labels"]) for _, t in pod_templates(objs)), pdb


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_selectors_do_not_overlap(renders: dict[str, list[Obj]], overlay: str) -> None:
    deps = of_kind(renders[overlay], "Deployment")
    for dep in deps:
        assert matches(dep["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
        for other in deps:
            if other is not dep:
                assert not matches(dep["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"]), (
                    f"{dep['metadata']['name']} would adopt pods of {other['metadata']['name']}"
                )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_restricted(renders: dict[str, list[Obj]], overlay: str) -> None:
    namespace = named(renders[overlay], "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for dep, template in pod_templates(renders[overlay]):
        spec = template["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] and pod["seccompProfile"]["type"] == "RuntimeDefault"
        expected_uid = TRITON_UID if dep["metadata"]["name"] == "triton" else SERVICE_UID
        assert pod["runAsUser"] == expected_uid, dep["metadata"]["name"]
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["limits"]["memory"], "every container has a memory limit"


# -- images ------------------------------------------------------------------------------------------


def dockerfile_stages(path: Path) -> list[str]:
    return re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", path.read_text(), flags=re.MULTILINE | re.IGNORECASE)


def test_images_are_listed_and_built_by_a_dockerfile(renders: dict[str, list[Obj]]) -> None:
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    listed = {i["name"] for i in base["images"]}
    service_stages = set(dockerfile_stages(ROOT / "docker" / "service.Dockerfile"))
    triton_stages = set(dockerfile_stages(ROOT / "docker" / "triton.Dockerfile"))
    for name in listed:
        stage = name.removeprefix("couturier/")
        assert stage in service_stages or stage in triton_stages, f"{name}: no Dockerfile target {stage}"
    used = set()
    for path in (K8S / "base").glob("*.yaml"):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj and obj.get("kind") == "Deployment":
                used |= {c["image"] for c in obj["spec"]["template"]["spec"]["containers"]}
    for path in (K8S / "components").rglob("*.yaml"):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj and obj.get("kind") == "Deployment":  # a patch (components/security) names no image
                used |= {c["image"] for c in obj["spec"]["template"]["spec"]["containers"] if "image" in c}
    assert used == listed, f"images used {sorted(used)} vs listed {sorted(listed)}"
    for overlay in ("dev-cpu", "prod-gpu"):
        kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        expected = {f"{i.get('newName', i['name'])}:{i['newTag']}" for i in kustomization["images"]}
        assert {i["name"] for i in kustomization["images"]} == listed
        rendered = {c["image"] for _, t in pod_templates(renders[overlay]) for c in t["spec"]["containers"]}
        assert rendered == expected, (overlay, rendered ^ expected)


# -- Triton ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ("dev-cpu", "prod-gpu"))
def test_triton_serves_every_model_with_tolerant_readiness(renders: dict[str, list[Obj]], overlay: str) -> None:
    objs = renders[overlay]
    dep = named(objs, "Deployment", "triton")
    spec = dep["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    assert args[0] == "tritonserver" and "--model-control-mode=explicit" in args
    assert [a.removeprefix("--load-model=") for a in args if a.startswith("--load-model=")] == list(ALL_MODELS)
    flags = dict(a.removeprefix("--").split("=", 1) for a in args[1:] if "=" in a)
    assert (
        container_ports(container)
        == {"http": int(flags["http-port"]), "grpc": int(flags["grpc-port"]), "metrics": int(flags["metrics-port"])}
        == {"http": 8000, "grpc": 8001, "metrics": 8002}
    )
    ready = container["readinessProbe"]
    assert ready["httpGet"]["path"] == "/v2/health/ready"
    assert ready["failureThreshold"] * ready["periodSeconds"] >= 10, "must ride out the ~1 s readiness flap of a swap"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(container_ports(container)["metrics"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["dshm"]["mountPath"] == "/dev/shm" and mounts["models"]["mountPath"] == "/models"
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    named(objs, "PersistentVolumeClaim", claim)
    gpus = {
        k: v for part in ("requests", "limits") for k, v in container["resources"].get(part, {}).items() if "gpu" in k
    }
    if overlay == "prod-gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert spec["nodeSelector"] and spec["tolerations"]
    else:
        assert not gpus
    # what the services dial is a Service port; triton-pods lists every pod for rollouts
    assert named(objs, "Service", "triton-pods")["spec"]["clusterIP"] == "None"


def test_triton_args_match_the_triton_dockerfile(renders: dict[str, list[Obj]]) -> None:
    text = (ROOT / "docker" / "triton.Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*?\])", text, flags=re.MULTILINE | re.DOTALL)[1].replace("\\\n", ""))  # type: ignore[index]
    container = named(renders["prod-gpu"], "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    assert cmd == container["args"]


# -- network policies --------------------------------------------------------------------------------

NAMESPACE_LABELS = {
    NAMESPACE: {"kubernetes.io/metadata.name": NAMESPACE},
    "milvus": {"kubernetes.io/metadata.name": "milvus"},
    "monitoring": {"kubernetes.io/metadata.name": "monitoring"},
    "elsewhere": {"kubernetes.io/metadata.name": "elsewhere"},
}
MILVUS_PROXY = {"app.kubernetes.io/name": "milvus", "app.kubernetes.io/instance": "milvus", "component": "proxy"}
MILVUS_ETCD = {"app.kubernetes.io/name": "etcd", "app.kubernetes.io/instance": "milvus"}


def allowed(policies: list[Obj], src: tuple[str, dict[str, str]], dst: tuple[str, dict[str, str]], port: int) -> bool:
    """Whether ingress from ``src`` (namespace, pod labels) to ``dst`` on ``port`` is allowed."""
    src_ns, src_labels = src
    dst_ns, dst_labels = dst
    selecting = [
        p for p in policies if p["metadata"]["namespace"] == dst_ns and matches(p["spec"]["podSelector"], dst_labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            if rule.get("ports") and port not in [p["port"] for p in rule["ports"]]:
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                ns_ok = (
                    matches(peer["namespaceSelector"], NAMESPACE_LABELS[src_ns])
                    if "namespaceSelector" in peer
                    else src_ns == dst_ns
                )
                pod_ok = matches(peer["podSelector"], src_labels) if "podSelector" in peer else True
                if ns_ok and pod_ok:
                    return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_call_graph(renders: dict[str, list[Obj]], overlay: str) -> None:
    objs = renders[overlay]
    policies = of_kind(objs, "NetworkPolicy") + milvus_policies()
    pods = {t["metadata"]["labels"]["app.kubernetes.io/name"]: t["metadata"]["labels"] for _, t in pod_templates(objs)}
    for policy in of_kind(objs, "NetworkPolicy"):  # every selector selects pods that exist
        assert any(matches(policy["spec"]["podSelector"], labels) for labels in pods.values()), policy["metadata"][
            "name"
        ]
        for rule in policy["spec"].get("ingress") or []:
            for peer in rule.get("from") or []:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(matches(peer["podSelector"], labels) for labels in pods.values()), peer
    for policy in milvus_policies():
        for rule in policy["spec"].get("ingress") or []:
            for peer in rule.get("from") or []:
                if (
                    "namespaceSelector" in peer
                    and peer["namespaceSelector"]["matchLabels"].get("kubernetes.io/metadata.name") == NAMESPACE
                ):
                    assert any(matches(peer["podSelector"], labels) for labels in pods.values())
    ports = {key: cls.model_fields["port"].default for key, cls in SETTINGS_BY_SERVICE.items()}
    # the orchestrator is the only caller of other couturier services (it resolves ids for latent)
    edges = {("orchestrator", "scoring"), ("orchestrator", "latent"), ("orchestrator", "retrieval")}
    outside = ("elsewhere", {"app": "client"})
    for dst in ports:
        assert allowed(policies, outside, (NAMESPACE, pods[dst]), ports[dst]) == (dst == "orchestrator"), dst
        for src in [*ports, "triton", "model-tools"]:
            expected = dst == "orchestrator" or (src, dst) in edges
            assert allowed(policies, (NAMESPACE, pods[src]), (NAMESPACE, pods[dst]), ports[dst]) == expected, (src, dst)
    for src in [*ports, "triton", "model-tools"]:
        expected = src in ("scoring", "latent", "retrieval", "model-tools")
        assert allowed(policies, (NAMESPACE, pods[src]), (NAMESPACE, pods["triton"]), 8001) == expected, src
        expected = src in ("scoring", "retrieval", "model-tools")
        assert allowed(policies, (NAMESPACE, pods[src]), ("milvus", MILVUS_PROXY), 19530) == expected, src
        assert not allowed(policies, (NAMESPACE, pods[src]), ("milvus", MILVUS_ETCD), 2379)
    assert not allowed(policies, outside, (NAMESPACE, pods["triton"]), 8001)
    assert allowed(policies, ("milvus", MILVUS_PROXY), ("milvus", MILVUS_ETCD), 2379)  # Milvus' own traffic
    monitoring = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
    assert allowed(policies, monitoring, (NAMESPACE, pods["scoring"]), 9090)
    assert allowed(policies, monitoring, (NAMESPACE, pods["triton"]), 8002)
    assert allowed(policies, monitoring, ("milvus", MILVUS_PROXY), 9091)
    assert not allowed(policies, monitoring, (NAMESPACE, pods["scoring"]), ports["scoring"])


# -- canary and Milvus -------------------------------------------------------------------------------


def test_canary_is_the_stable_scoring_pod_with_another_pin(renders: dict[str, list[Obj]]) -> None:
    objs = renders["prod-gpu+canary"]
    stable, canary = named(objs, "Deployment", "scoring"), named(objs, "Deployment", "scoring-canary")
    service = named(objs, "Service", "scoring")
    assert matches({"matchLabels": service["spec"]["selector"]}, canary["spec"]["template"]["metadata"]["labels"])
    assert canary["spec"]["replicas"] >= 1
    pins = {}
    for name, dep in (("stable", stable), ("canary", canary)):
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        raw = container_env(objs, container)["COUTURIER_SCORING_MODEL_VERSIONS"]
        pins[name] = json.loads(raw)
        assert set(pins[name]) <= set(ALL_MODELS) and all(v.isdigit() for v in pins[name].values()), raw
    assert pins["stable"].keys() == pins["canary"].keys() and pins["stable"] != pins["canary"]

    def normalised(dep: Obj) -> Obj:
        template = copy.deepcopy(dep["spec"]["template"])
        template["metadata"]["labels"].pop("couturier.io/track")
        for container in template["spec"]["containers"]:
            container["envFrom"] = container["envFrom"][:1]
        return template

    assert normalised(stable) == normalised(canary), "k8s/components/canary drifted from base/scoring.yaml"


def test_milvus_values_match_the_services() -> None:
    prod = yaml.safe_load((K8S / "milvus" / "values.yaml").read_text())
    dev = yaml.safe_load((K8S / "milvus" / "values-dev.yaml").read_text())
    assert prod["cluster"]["enabled"] is True and dev["cluster"]["enabled"] is False
    assert prod["service"]["port"] == 19530 and prod["metrics"]["enabled"] is True
    assert yaml.safe_load(prod["extraConfigFiles"]["user.yaml"])["common"]["security"]["authorizationEnabled"] is True
    assert yaml.safe_load(dev["extraConfigFiles"]["user.yaml"])["common"]["security"]["authorizationEnabled"] is False
    docs = (ROOT / "docs" / "deployment.md").read_text()
    for name in EXTERNAL_SECRETS:  # the production secret an operator creates is documented
        assert f"create secret generic {name}" in docs
    assert "k8s/milvus/values.yaml" in docs and "k8s/milvus/values-dev.yaml" in docs


# -- the security component (docs/security.md) -------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_security_component_carries_tls_and_tokens_from_secrets(
    tmp_path: Path, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prod-gpu plus components/security: every service reads its certificate files from the mounted
    couturier-tls Secret (mTLS between the services), the orchestrator its tokens from
    orchestrator-auth-tokens, and readiness asks health over TLS; every object still validates."""
    import kubernetes_validate

    copy_root = tmp_path / "k8s"
    shutil.copytree(K8S, copy_root)
    with (copy_root / "overlays" / "prod-gpu" / "kustomization.yaml").open("a") as overlay:
        overlay.write("components:\n  - ../../components/security\n")
    objs = kustomize(copy_root / "overlays" / "prod-gpu")
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)
    seen = set()
    for dep, container, key in service_containers(objs):
        seen.add(key)
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        secret_files = {
            f"{path}/{name}"
            for path, volume in mounts.items()
            if "secret" in volume
            for name in ("tls.crt", "tls.key", "ca.crt", "tokens")
        }
        assert mounts["/etc/couturier/tls"]["secret"]["secretName"] == "couturier-tls"
        for name in [n for n in os.environ if n.startswith("COUTURIER_")]:
            monkeypatch.delenv(name)
        for name, value in container_env(objs, container).items():
            monkeypatch.setenv(name, value)
        settings = load_settings(key)
        files = [
            v
            for k, v in settings.model_dump().items()
            if (k.endswith("_file") and "tls" in k) or k == "auth_tokens_file"
        ]
        assert all(f in secret_files for f in files if f), (key, files)
        assert settings.tls_cert_file and settings.tls_key_file
        if key == "orchestrator":  # the public edge: TLS and tokens; mTLS to the services it calls
            assert settings.auth_tokens_file == "/etc/couturier/auth/tokens" and not settings.tls_client_ca_file
            assert mounts["/etc/couturier/auth"]["secret"]["secretName"] == "orchestrator-auth-tokens"
            assert settings.downstream_tls_ca_file and settings.downstream_tls_cert_file  # type: ignore[attr-defined]
        else:
            assert settings.tls_client_ca_file == "/etc/couturier/tls/ca.crt"
        probe = container["readinessProbe"]
        assert "grpc" not in probe, "the kubelet's gRPC probe cannot speak TLS"
        command = probe["exec"]["command"]
        assert command[:3] == ["couturier", "health", f"127.0.0.1:{settings.port}"]
        assert f"--server-name={key}.{NAMESPACE}.svc.cluster.local" in command
        assert "--ca-file=/etc/couturier/tls/ca.crt" in command
    assert seen == set(SETTINGS_BY_SERVICE)
