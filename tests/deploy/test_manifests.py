"""Manifests: core kinds valid for a named Kubernetes version; custom kinds have their required
fields; every port, path, probe and setting they name exists in the server (its defaults,
its --help, and a running instance)."""
import copy
import json
import os

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from conftest import DEPLOY, ROOT, defaults, get, help_text, load_yaml_all

K8S_VERSION = os.environ.get("K8S_VERSION", "1.32")
BASE = DEPLOY / "k8s/base"
CUSTOM = {"ServiceMonitor", "PrometheusRule", "ServingRuntime", "InferenceService"}


def base_docs() -> list:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = []
    for r in kust["resources"]:
        docs += load_yaml_all(BASE / r)
    for gen in kust["configMapGenerator"]:
        data = {os.path.basename(f): (BASE / f).read_text() for f in gen["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return docs


def overlay_docs(name: str) -> list:
    kust = yaml.safe_load((DEPLOY / f"k8s/overlays/{name}/kustomization.yaml").read_text())
    assert kust["resources"] == ["../../base"]
    docs = copy.deepcopy(base_docs())
    for p in kust["patches"]:
        ops = yaml.safe_load((DEPLOY / f"k8s/overlays/{name}" / p["path"]).read_text())
        for i, d in enumerate(docs):
            if d["kind"] == p["target"]["kind"] and d["metadata"]["name"] == p["target"]["name"]:
                docs[i] = jsonpatch.apply_patch(d, ops)
    return docs


def gpu_docs() -> list:
    return overlay_docs("gpu")


def replicas_docs() -> list:
    return overlay_docs("replicas")


def api_keys_docs() -> list:
    return overlay_docs("api-keys")


def one(docs, kind):
    [d] = [d for d in docs if d["kind"] == kind]
    return d


def env_of(container) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def core_docs():
    overlays = (("base", base_docs()), ("gpu", gpu_docs()), ("replicas", replicas_docs()), ("api-keys", api_keys_docs()))
    return [(n, d) for n, docs in overlays for d in docs if d["kind"] not in CUSTOM]


@pytest.mark.parametrize("name,doc", core_docs(), ids=lambda x: x if isinstance(x, str) else x["kind"])
def test_core_kinds_valid_for_kubernetes_version(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_env_var_is_a_server_setting():
    text = help_text()
    deployments = [one(docs, "Deployment") for docs in (base_docs(), gpu_docs(), replicas_docs(), api_keys_docs())]
    containers = [d["spec"]["template"]["spec"]["containers"][0] for d in deployments]
    for c in [*containers, *load_yaml_all(DEPLOY / "kserve/servingruntime.yaml")[0]["spec"]["containers"]]:
        for name in env_of(c):
            assert f"[env: {name}" in text, f"{name} is not a proco-serve setting"


def test_deployment_matches_server():
    cfg = defaults()
    docs = base_docs()
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = env_of(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    # The listeners: same ports as the server's defaults, bound to all interfaces in the pod.
    assert port_of(env["PROCO_LISTEN"]) == port_of(cfg["listen"]) == ports["http"]
    assert port_of(env["PROCO_GRPC_LISTEN"]) == port_of(cfg["grpc_listen"]) == ports["grpc"]
    assert env["PROCO_LISTEN"].startswith("0.0.0.0:")
    # Probes name the server's health routes on the http port.
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["startupProbe"]["httpGet"]["path"] == "/health/ready"
    for p in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[p]["httpGet"]["port"] in ("http", ports["http"])
    # Termination: preStop sleep, then the server's drain delay and shutdown timeout, must fit.
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    drain_ms = int(env.get("PROCO_DRAIN_DELAY_MS", cfg["drain_delay_ms"]))
    shut_ms = int(env.get("PROCO_SHUTDOWN_TIMEOUT_MS", cfg["shutdown_timeout_ms"]))
    assert pod["terminationGracePeriodSeconds"] > int(pre[1]) + (drain_ms + shut_ms) / 1000
    # Security context.
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and not sc["privileged"]
    assert pod["securityContext"]["runAsNonRoot"]
    # The admin token from a Secret, the model dir from the ConfigMap.
    tok = [e for e in c["env"] if e["name"] == "PROCO_ADMIN_TOKEN"][0]
    assert "secretKeyRef" in tok["valueFrom"]
    mount = [m for m in c["volumeMounts"] if m["mountPath"] == env["PROCO_MODEL_DIR"]][0]
    vol = [v for v in pod["volumes"] if v["name"] == mount["name"]][0]
    assert vol["configMap"]["name"] == "proco-model" and "subPath" not in mount  # subPath mounts never update
    assert env["PROCO_PROTOTYPE_HISTORY"] == "0"  # the ConfigMap is read-only
    for k in ("cpu", "memory"):
        assert k in c["resources"]["requests"] and k in c["resources"]["limits"]


def test_configmap_holds_the_bundled_model():
    cm = one(base_docs(), "ConfigMap")
    assert cm["data"]["prototypes.json"] == (ROOT / "models/cifar10-lt/prototypes.json").read_text()
    import tomllib
    mine = tomllib.loads(cm["data"]["model.toml"])
    theirs = tomllib.loads((ROOT / "models/cifar10-lt/model.toml").read_text())
    assert mine["encoder"].endswith("/" + theirs["encoder"])
    mine.pop("encoder"), theirs.pop("encoder")
    # Encoder variants too: the same files, by absolute path in the image.
    assert set(mine.get("variants", {})) == set(theirs.get("variants", {}))
    for name, variant in theirs.get("variants", {}).items():
        assert mine["variants"][name].pop("encoder").endswith("/" + variant.pop("encoder"))
    assert mine == theirs
    # The encoder path is where the Containerfile puts the bundled model.
    assert mine and "/opt/proco/models/cifar10-lt/\n" in (DEPLOY / "Containerfile").read_text()
    assert len(json.dumps(cm["data"])) < 1024 * 1024  # ConfigMap size limit


def test_service_pdb_hpa_select_the_pods():
    docs = base_docs()
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"http", "grpc"}
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]


def test_gpu_overlay():
    c = one(gpu_docs(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env_of(c)["PROCO_EXECUTION_PROVIDER"] == "cuda"
    assert "cuda" in help_text().split("--execution-provider <EXECUTION_PROVIDER>")[1].split("\n")[1]


def test_replicas_overlay():
    """Three replicas, the store's URL from a Secret (never a literal), history kept in it."""
    d = one(replicas_docs(), "Deployment")
    assert d["spec"]["replicas"] == 3
    env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PROCO_PROTOTYPE_STORE"]["valueFrom"]["secretKeyRef"] == {"name": "proco-prototype-store", "key": "url"}
    assert "value" not in env["PROCO_PROTOTYPE_STORE"]
    assert int(env["PROCO_PROTOTYPE_HISTORY"]["value"]) > 0
    assert "PROCO_PROTOTYPE_STORE" not in env_of(one(base_docs(), "Deployment")["spec"]["template"]["spec"]["containers"][0])


def test_api_keys_overlay_reads_the_mounted_secret():
    spec = one(api_keys_docs(), "Deployment")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    path = env_of(container)["PROCO_API_KEYS_FILE"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "api-keys"]
    assert path.startswith(mount["mountPath"] + "/")
    [volume] = [v for v in spec["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == "proco-api-keys"
    base = one(base_docs(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "PROCO_API_KEYS_FILE" not in env_of(base), "the base needs no Secret"
    assert env_of(base)["PROCO_OTLP_ENDPOINT"] == "", "traces off until an endpoint is given"


def test_servicemonitor(server):
    docs = base_docs()
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    svc = one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
        status, body = get(server.url + ep["path"])
        assert status == 200 and b"proco_ready" in body


def test_hpa_custom_metric_is_exported(server):
    hpa = one(base_docs(), "HorizontalPodAutoscaler")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    body = get(server.url + "/metrics")[1].decode()
    for n in names:
        assert f"\n{n} " in body or f"\n{n}{{" in body, n


def test_prometheusrule_is_the_alerts_file():
    pr = one(base_docs(), "PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert pr["spec"]["groups"] == yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]


def test_kserve(server):
    cfg = defaults()
    [rt] = load_yaml_all(DEPLOY / "kserve/servingruntime.yaml")
    [isvc] = load_yaml_all(DEPLOY / "kserve/inferenceservice.yaml")
    assert rt["apiVersion"] == "serving.kserve.io/v1alpha1" and rt["kind"] == "ServingRuntime"
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    spec = rt["spec"]
    assert spec["containers"] and spec["supportedModelFormats"]
    assert "v2" in spec["protocolVersions"]
    c = spec["containers"][0]
    env = env_of(c)
    assert c["ports"][0]["containerPort"] == port_of(env["PROCO_LISTEN"]) == port_of(cfg["listen"])
    assert port_of(env["PROCO_GRPC_LISTEN"]) == port_of(cfg["grpc_listen"])
    for p in ("readinessProbe", "livenessProbe"):
        assert c[p]["httpGet"]["port"] == c["ports"][0]["containerPort"]
        assert get(server.url + c[p]["httpGet"]["path"])[0] == 200
    m = isvc["spec"]["predictor"]["model"]
    assert m["runtime"] == rt["metadata"]["name"]
    assert m["modelFormat"]["name"] in {f["name"] for f in spec["supportedModelFormats"]}
    assert m["protocolVersion"] == "v2"
    # The server speaks v2 where KServe expects it.
    assert get(server.url + "/v2/health/ready")[0] == 200
    assert server.json("/v2")["name"]


@pytest.mark.skipif(not __import__("shutil").which("kubectl"), reason="kubectl not installed")
@pytest.mark.parametrize("where,loader", [("k8s/base", base_docs), ("k8s/overlays/gpu", gpu_docs), ("k8s/overlays/replicas", replicas_docs), ("k8s/overlays/api-keys", api_keys_docs)])
def test_kustomize_renders_what_the_tests_check(where, loader):
    import subprocess
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / where)], capture_output=True, text=True, check=True).stdout
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out)}
    mine = {(d["kind"], d["metadata"]["name"]): d for d in loader()}
    assert rendered.keys() == mine.keys()
    for key in ("Deployment", "proco-serve"), ("ConfigMap", "proco-model"):
        assert rendered[key].get("spec") == mine[key].get("spec") and rendered[key].get("data") == mine[key].get("data"), key
