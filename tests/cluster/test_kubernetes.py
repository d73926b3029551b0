"""Kubernetes manifests: schema-valid, consistent, rendered like kustomize, with a real CLI.

Every object (the kustomize base, the overlays, the Job template, what `mongotune k8s render`
and `mongotune k8s job` write) is validated against the Kubernetes API's JSON schemas in strict
mode (unknown fields fail) with kubernetes-validate from PyPI. Where `kubectl` (which embeds
kustomize) is installed, the base and overlays are also built with it and compared object for
object with mongotune's own renderer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from helpers import REPO, run_cli
from mongotune.cluster import kubernetes as k8s
from mongotune.errors import ConfigError

pytestmark = pytest.mark.timeout(300)

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the test extra) is not installed: "
                         "pip install -e '.[test]'; the manifests were NOT schema-checked")

DEPLOY = REPO / "deploy" / "kubernetes"
# the oldest Kubernetes still in wide use that has every field the manifests use, and the newest schema
K8S_VERSIONS = ("1.27", kv.utils.latest_version())
IMAGE = "registry.example.com:5000/team/mongotune-worker:2024.11-rc1"
NAMESPACE = "tuning-lab"
WORKERS = 7
APP_SECRET, ROOT_SECRET = "mongotune-mongo-app", "mongotune-mongo-root"


def validate(obj: dict) -> None:
    for version in K8S_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.utils.ValidationError as exc:
            where = ".".join(map(str, exc.path))
            pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')} is not valid Kubernetes {version}: "
                        f"{where}: {exc.message}")
        except kv.utils.SchemaNotFoundError as exc:
            pytest.fail(exc.message)


def by_key(objects) -> dict:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def pod_specs(obj):
    return list(k8s._pod_specs(obj))


def containers(obj):
    return [c for pod in pod_specs(obj) for c in (pod.get("initContainers") or []) + pod["containers"]]


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env") or []}


def kubectl_kustomize(folder: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed (apt-get install kubectl): the manifests were NOT built with "
                    "kustomize, only with mongotune's renderer")
    res = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    return [o for o in yaml.safe_load_all(res.stdout) if o]


def one_error_line(res, *needles) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert res.stdout == "", res.stdout
    return lines[0]


# ---------------------------------------------------------------- the validator itself
def test_strict_schema_validation_catches_mistakes():
    """The check below would catch a misspelled field, a wrong type and a missing required field."""
    good = by_key(k8s.load_base())[("Deployment", "mongotune-worker")]
    validate(good)
    spelled = yaml.safe_load(yaml.safe_dump(good))
    spelled["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 120
    typed = yaml.safe_load(yaml.safe_dump(good))
    typed["spec"]["replicas"] = "four"
    missing = yaml.safe_load(yaml.safe_dump(good))
    del missing["spec"]["selector"]
    for bad in (spelled, typed, missing):
        with pytest.raises(kv.utils.ValidationError):
            kv.validate(bad, K8S_VERSIONS[0], strict=True)


# ---------------------------------------------------------------- the shipped manifests
def test_base_objects_are_valid_and_complete():
    objects = k8s.load_base()
    assert set(by_key(objects)) == {
        ("ConfigMap", "mongotune-config"), ("ConfigMap", "mongotune-mongo-init"),
        ("PersistentVolumeClaim", "mongotune-data-cache"), ("PersistentVolumeClaim", "mongotune-artifacts"),
        ("Service", "mongotune-mongo"), ("StatefulSet", "mongotune-mongo"),
        ("NetworkPolicy", "mongotune-mongo"), ("NetworkPolicy", "mongotune-trials"),
        ("Deployment", "mongotune-worker")}
    for obj in objects:
        validate(obj)


def test_job_template_is_valid():
    (job,) = [d for d in yaml.safe_load_all((DEPLOY / "jobs" / "coordinator.yaml").read_text()) if d]
    validate(job)
    assert job["metadata"]["generateName"] == "mongotune-launch-"
    (c,) = containers(job)
    assert c["image"] == k8s.WORKER_IMAGE and c["args"][0] == "launch"


@pytest.mark.parametrize("folder", ["base", "overlays/example", "overlays/external-mongo"])
def test_kubectl_kustomize_builds_valid_objects(folder):
    objects = kubectl_kustomize(DEPLOY / folder)
    assert objects
    for obj in objects:
        validate(obj)


def test_renderer_matches_kubectl_kustomize_on_the_base():
    assert by_key(k8s.load_base()) == by_key(kubectl_kustomize(DEPLOY / "base"))


def _overlay_values(folder: Path):
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    (img,) = kust["images"]
    (rep,) = kust["replicas"]
    assert img["name"] == k8s.WORKER_IMAGE and rep["name"] == k8s.WORKER_DEPLOYMENT
    return f"{img['newName']}:{img['newTag']}", kust["namespace"], rep["count"]


def test_render_equals_the_example_overlay():
    image, namespace, workers = _overlay_values(DEPLOY / "overlays" / "example")
    assert by_key(k8s.render(image, namespace, workers)) == by_key(kubectl_kustomize(DEPLOY / "overlays" / "example"))


def test_render_with_mongo_url_equals_the_external_overlay():
    folder = DEPLOY / "overlays" / "external-mongo"
    image, namespace, workers = _overlay_values(folder)
    built = by_key(kubectl_kustomize(folder))
    url = built[("ConfigMap", k8s.CONFIG_MAP)]["data"][k8s.URL_KEY]
    assert by_key(k8s.render(image, namespace, workers, mongo_url=url)) == built


def test_render_equals_kustomize_edit_of_an_overlay(tmp_path):
    """What `kustomize edit set image/namespace/replicas` writes gives what `render` gives."""
    name, tag = IMAGE.rsplit(":", 1)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": NAMESPACE, "resources": [os.path.relpath(DEPLOY / "base", overlay)],
        "images": [{"name": k8s.WORKER_IMAGE, "newName": name, "newTag": tag}],
        "replicas": [{"name": k8s.WORKER_DEPLOYMENT, "count": WORKERS}]}))
    assert by_key(k8s.render(IMAGE, NAMESPACE, WORKERS)) == by_key(kubectl_kustomize(overlay))


# ---------------------------------------------------------------- what a render sets
def assert_rendered(objects, image=IMAGE, namespace=NAMESPACE, workers=WORKERS, external=False):
    keys = set(by_key(objects))
    base = set(by_key(k8s.load_base()))
    mongo_side = {k for k in base if k[1] in ("mongotune-mongo", "mongotune-mongo-init")}
    assert keys == (base - mongo_side if external else base)
    for obj in objects:
        validate(obj)
        assert obj["metadata"]["namespace"] == namespace, obj["metadata"]
        for c in containers(obj):
            if c["name"] == "mongodb":
                assert c["image"] == "mongo:8.0"
            else:
                assert c["image"] == image, (obj["kind"], c["name"], c["image"])
    assert by_key(objects)[("Deployment", k8s.WORKER_DEPLOYMENT)]["spec"]["replicas"] == workers
    if not external:
        assert by_key(objects)[("StatefulSet", "mongotune-mongo")]["spec"]["replicas"] == 1
    assert sum(len(containers(o)) for o in objects) == (1 if external else 2)


def test_render_sets_image_namespace_and_workers():
    assert_rendered(k8s.render(IMAGE, NAMESPACE, WORKERS))


def test_render_cli_to_stdout_and_to_a_folder(tmp_path):
    res = run_cli("k8s", "render", "--image", IMAGE, "--namespace", NAMESPACE, "--workers", WORKERS)
    assert res.returncode == 0, res.stderr
    assert_rendered([o for o in yaml.safe_load_all(res.stdout) if o])

    out = tmp_path / "rendered"
    res = run_cli("k8s", "render", "--image", IMAGE, "-n", NAMESPACE, "--workers", WORKERS, "--out", out)
    assert res.returncode == 0, res.stderr
    assert f"kubectl apply -k {out}" in res.stdout
    kust = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in out.glob("*.yaml") if p.name != "kustomization.yaml")
    objects = [o for f in kust["resources"] for o in yaml.safe_load_all((out / f).read_text()) if o]
    assert_rendered(objects)
    # the folder is an overlay kustomize takes as it is
    if shutil.which("kubectl"):
        assert by_key(kubectl_kustomize(out)) == by_key(objects)

    # rendering again into it replaces the old files: no stale MongoDB objects stay behind
    url = "mongodb+srv://mongotune@cluster0.example.net/mongotune?retryWrites=true&w=majority"
    res = run_cli("k8s", "render", "--image", "mongotune-worker:2", "-n", "other", "--workers", 2, "--mongo-url", url,
                  "--out", out)
    assert res.returncode == 0, res.stderr
    assert "mongotune-mongo-root" not in res.stdout  # no root Secret needed with an external MongoDB
    files = {p.name for p in out.glob("*.yaml")}
    assert not any("mongotune-mongo" in f and "config" not in f for f in files), files
    objects = [o for f in sorted(files - {"kustomization.yaml"}) for o in yaml.safe_load_all((out / f).read_text()) if o]
    assert_rendered(objects, image="mongotune-worker:2", namespace="other", workers=2, external=True)
    assert by_key(objects)[("ConfigMap", k8s.CONFIG_MAP)]["data"][k8s.URL_KEY] == url


def test_external_mongo_drops_every_trace_of_the_in_cluster_one():
    url = "mongodb://mongotune@db1.example.com:27017,db2.example.com:27017/mongotune?replicaSet=rs0&authSource=admin"
    objects = k8s.render(IMAGE, NAMESPACE, 3, mongo_url=url)
    assert_rendered(objects, workers=3, external=True)
    text = k8s.to_yaml(objects)
    assert ROOT_SECRET not in text and "mongotune-mongo:27017" not in text and "initdb" not in text
    assert by_key(objects)[("ConfigMap", k8s.CONFIG_MAP)]["data"][k8s.URL_KEY] == url


# ---------------------------------------------------------------- the coordinator Job
def test_job_cli_renders_a_valid_coordinator_job(tmp_path):
    res = run_cli("k8s", "job", "--image", IMAGE, "--namespace", NAMESPACE, "--",
                  "launch", "convstrix", "--dataset", "cifar10", "--max-evals", "200", "--study", "c10")
    assert res.returncode == 0, res.stderr
    (job,) = [o for o in yaml.safe_load_all(res.stdout) if o]
    validate(job)
    assert job["metadata"] == {**job["metadata"], "generateName": "mongotune-launch-", "namespace": NAMESPACE}
    assert "name" not in job["metadata"]
    (c,) = containers(job)
    assert c["image"] == IMAGE
    assert c["args"] == ["launch", "convstrix", "--dataset", "cifar10", "--max-evals", "200", "--study", "c10",
                         "--quiet"]
    assert "nvidia.com/gpu" not in str(c["resources"])  # the coordinator trains nothing

    job = k8s.coordinator_job(IMAGE, NAMESPACE, ["resume", "c10", "-q"], name="resume-c10")
    validate(job)
    assert job["metadata"]["name"] == "resume-c10" and "generateName" not in job["metadata"]
    assert containers(job)[0]["args"] == ["resume", "c10", "-q"]


# ---------------------------------------------------------------- bad input: one line, exit 2
RENDER_OK = {"--image": IMAGE, "--namespace": NAMESPACE, "--workers": "3"}


@pytest.mark.parametrize("override, needles", [
    ({"--workers": "0"}, ["--workers must be a positive integer", "got 0"]),
    ({"--workers": "-2"}, ["--workers must be a positive integer"]),
    ({"--image": "Registry.Example.com/Team/Worker:1"}, ["bad image reference", "'Team'"]),
    ({"--image": "worker:has space"}, ["bad image reference"]),
    ({"--image": "worker:"}, ["bad image reference", "bad tag"]),
    ({"--image": "worker@sha256:abc"}, ["bad image reference", "bad digest"]),
    ({"--image": "-worker"}, ["bad image reference"]),
    ({"--image": ""}, ["bad image reference"]),
    ({"--namespace": "Tuning_Lab"}, ["bad namespace 'Tuning_Lab'"]),
    ({"--namespace": "x" * 64}, ["bad namespace"]),
    ({"--mongo-url": "postgres://db.example.com/x"}, ["bad MongoDB URL", "unknown scheme"]),
    ({"--mongo-url": "mongodb://mongotune@db.example.com:99999/mongotune"}, ["bad port"]),
], ids=lambda v: str(v)[:40])
def test_render_bad_input(override, needles):
    opts = {**RENDER_OK, **override}
    one_error_line(run_cli("k8s", "render", *[x for kv_ in opts.items() for x in kv_]), *needles)


@pytest.mark.parametrize("password", ["hunter2", "p/ss#w@rd:1", "s%C3%A9same", "ключ"])
def test_render_refuses_a_password_in_the_url_without_showing_it(password):
    url = f"mongodb://mongotune:{password}@db.example.com:27017/mongotune"
    line = one_error_line(run_cli("k8s", "render", "--image", IMAGE, "-n", NAMESPACE, "--workers", 2,
                                  "--mongo-url", url), "holds a password", "Secret")
    for secret in (password, unquote(password)):
        for i in range(len(secret) - 3):  # nor any tail of it (a leak "in part")
            assert secret[i:] not in line, line


def test_render_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    one_error_line(run_cli("k8s", "render", "--image", IMAGE, "-n", NAMESPACE, "--workers", 2, "--out", tmp_path),
                   "not empty")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_render_without_manifests_says_where_to_find_them(tmp_path):
    one_error_line(run_cli("k8s", "render", "--image", IMAGE, "-n", NAMESPACE, "--workers", 2,
                           "--manifests", tmp_path), "no Kubernetes manifests", "--manifests")


@pytest.mark.parametrize("args, needles", [
    (["final", "s1"], ["runs launch or resume", "'final'"]),
    (["launch", "baseline", "--mongo", "mongodb://u:topsecret@h/db"], ["leave --mongo out"]),
    (["launch", "baseline", "--workers=2"], ["leave --workers out"]),
])
def test_job_bad_input(args, needles):
    line = one_error_line(run_cli("k8s", "job", "--image", IMAGE, "-n", NAMESPACE, "--", *args), *needles)
    assert "topsecret" not in line


def test_job_bad_name_and_image():
    one_error_line(run_cli("k8s", "job", "--image", IMAGE, "-n", NAMESPACE, "--name", "Study_1", "--",
                           "resume", "s"), "bad Job name")
    one_error_line(run_cli("k8s", "job", "--image", "UPPER", "-n", NAMESPACE, "--", "resume", "s"),
                   "bad image reference")


@pytest.mark.parametrize("ref", ["mongotune-worker", "localhost:5000/mongotune-worker:latest", "ghcr.io/a/b/c:1.0_rc-2",
                                 "docker.io/library/python:3.13-slim", "x@sha256:" + "a" * 64,
                                 "registry.example.com/ml/w:v1@sha256:" + "0f" * 32])
def test_good_image_references(ref):
    assert k8s.check_image(ref) == ref


# ---------------------------------------------------------------- what the objects promise
def test_pods_run_unprivileged_with_resources():
    for obj in k8s.render(IMAGE, NAMESPACE, WORKERS) + [k8s.coordinator_job(IMAGE, NAMESPACE, ["resume", "s"])]:
        for pod in pod_specs(obj):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] > 0
            assert pod["automountServiceAccountToken"] is False
        for c in containers(obj):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["readOnlyRootFilesystem"] is True
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
            assert c["resources"]["limits"]["memory"]


def test_image_user_is_the_pods_user():
    dockerfile = (REPO / "workers" / "Dockerfile").read_text()
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")][-1]
    uid, gid = (int(x) for x in user.split(":"))
    assert f"--uid {uid}" in dockerfile and f"--gid {gid}" in dockerfile
    for obj in (by_key(k8s.load_base())[("Deployment", "mongotune-worker")],
                k8s.coordinator_job(IMAGE, NAMESPACE, ["resume", "s"])):
        (pod,) = pod_specs(obj)
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)


def test_worker_pool_deployment():
    objs = by_key(k8s.render(IMAGE, NAMESPACE, WORKERS))
    dep = objs[("Deployment", "mongotune-worker")]
    (pod,) = pod_specs(dep)
    (c,) = containers(dep)
    assert c["args"] == ["worker"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert 60 <= pod["terminationGracePeriodSeconds"] <= 300
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels(dep).items()
    env = env_of(c)
    assert env["MONGOTUNE_MONGO"]["valueFrom"]["configMapKeyRef"] == {"name": k8s.CONFIG_MAP, "key": k8s.URL_KEY}
    assert env["MONGOTUNE_MONGO_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": APP_SECRET, "key": "password"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims[mounts[env["MONGOTUNE_DATA_DIR"]["value"]]] == "mongotune-data-cache"
    assert claims[mounts[env["MONGOTUNE_ARTIFACTS"]["value"]]] == "mongotune-artifacts"
    for claim in filter(None, claims.values()):
        assert ("PersistentVolumeClaim", claim) in objs
    assert "livenessProbe" not in c  # no port to probe: the reasons are in the manifest


def pod_labels(obj) -> dict:
    return obj["spec"]["template"]["metadata"]["labels"]


def test_least_privilege_wiring():
    """Workers and the Job see only the application user's password; only MongoDB sees root's."""
    objs = by_key(k8s.load_base())
    job = k8s.coordinator_job(IMAGE, NAMESPACE, ["launch", "baseline"])
    for obj in (objs[("Deployment", "mongotune-worker")], job):
        text = yaml.safe_dump(obj)
        assert ROOT_SECRET not in text and "MONGO_INITDB" not in text
    url = urlsplit(objs[("ConfigMap", k8s.CONFIG_MAP)]["data"][k8s.URL_KEY])
    assert url.password is None and url.username == "mongotune"
    assert url.path == "/mongotune" and parse_qs(url.query)["authSource"] == ["mongotune"]
    assert url.hostname == objs[("Service", "mongotune-mongo")]["metadata"]["name"]

    sts = objs[("StatefulSet", "mongotune-mongo")]
    (mongo,) = containers(sts)
    env = env_of(mongo)
    assert env["MONGO_INITDB_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == ROOT_SECRET
    assert env["MONGO_APP_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": APP_SECRET, "key": "password"}
    assert env["MONGO_APP_USER"]["value"] == url.username and env["MONGO_APP_DATABASE"]["value"] == "mongotune"
    # the init script is mounted where the mongo image runs it on first start
    (pod,) = pod_specs(sts)
    mounts = {m["name"]: m["mountPath"] for m in mongo["volumeMounts"]}
    init = next(v for v in pod["volumes"] if v.get("configMap"))
    assert mounts[init["name"]] == "/docker-entrypoint-initdb.d"
    script = objs[("ConfigMap", init["configMap"]["name"])]["data"]
    assert list(script) == ["10-mongotune-app-user.js"]
    assert 'role: "readWrite", db: appDb' in script["10-mongotune-app-user.js"]


def test_mongodb_service_statefulset_and_network_policy_agree():
    objs = by_key(k8s.load_base())
    svc, sts = objs[("Service", "mongotune-mongo")], objs[("StatefulSet", "mongotune-mongo")]
    pol = objs[("NetworkPolicy", "mongotune-mongo")]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"].items() <= pod_labels(sts).items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels(sts).items()
    assert selects(pol["spec"]["podSelector"], pod_labels(sts))
    (rule,) = pol["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # no namespaceSelector: pods of this namespace only
    job = k8s.coordinator_job(IMAGE, NAMESPACE, ["resume", "s"])
    for client in (objs[("Deployment", "mongotune-worker")], job):
        assert selects(peer["podSelector"], pod_labels(client))
    # not every pod of mongotune: MongoDB's own pod, or anything else labelled part-of=mongotune, is left out
    assert not selects(peer["podSelector"], pod_labels(sts))
    assert not selects(peer["podSelector"], {"app.kubernetes.io/part-of": "mongotune"})
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]


def selects(selector: dict, labels: dict) -> bool:
    """Does a Kubernetes label selector (matchLabels, matchExpressions with In/NotIn/Exists) pick ``labels``?"""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        have = e["key"] in labels
        ok = {"In": have and labels.get(e["key"]) in e.get("values", []),
              "NotIn": not have or labels[e["key"]] not in e.get("values", []),
              "Exists": have, "DoesNotExist": not have}[e["operator"]]
        if not ok:
            return False
    return True


def test_trial_pods_reach_no_metadata_service_and_take_no_connections():
    """Workers and the coordinator run the user's code: egress to MongoDB, DNS and the internet minus the
    link-local range (cloud metadata services), no ingress."""
    import ipaddress

    objs = by_key(k8s.load_base())
    pol = objs[("NetworkPolicy", "mongotune-trials")]
    job = k8s.coordinator_job(IMAGE, NAMESPACE, ["resume", "s"])
    for pod in (objs[("Deployment", "mongotune-worker")], job):
        assert selects(pol["spec"]["podSelector"], pod_labels(pod))
    assert not selects(pol["spec"]["podSelector"], pod_labels(objs[("StatefulSet", "mongotune-mongo")]))
    assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"] and pol["spec"]["ingress"] == []

    def allowed(ip: str, port: int, proto: str = "TCP") -> bool:
        addr = ipaddress.ip_address(ip)
        for rule in pol["spec"]["egress"]:
            if rule.get("ports") and not any(p["port"] == port and p["protocol"] == proto for p in rule["ports"]):
                continue
            for peer in rule["to"]:
                block = peer.get("ipBlock")
                if block and addr in ipaddress.ip_network(block["cidr"]) and not any(
                        addr in ipaddress.ip_network(x) for x in block.get("except", [])):
                    return True
        return False

    for metadata in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254"):
        assert not allowed(metadata, 80) and not allowed(metadata, 443), metadata
    assert allowed("151.101.1.69", 443) and allowed("2a04:4e42::223", 443)  # downloads, an external MongoDB
    assert allowed("169.254.20.10", 53, "UDP")  # a node-local DNS cache
    mongo = pol["spec"]["egress"][0]
    assert selects(mongo["to"][0]["podSelector"], pod_labels(objs[("StatefulSet", "mongotune-mongo")]))
    assert mongo["ports"] == [{"protocol": "TCP", "port": 27017}]
    # an external MongoDB drops the in-cluster one but keeps this policy
    external = by_key(k8s.render(IMAGE, NAMESPACE, 2, mongo_url="mongodb://mongotune@db.example.com/mongotune"))
    assert ("NetworkPolicy", "mongotune-trials") in external


def test_every_empty_dir_has_a_size_limit_and_the_spool_outlives_the_pod():
    objects = k8s.load_base() + [k8s.coordinator_job(IMAGE, NAMESPACE, ["resume", "s"])]
    empty_dirs = [v for o in objects for pod in pod_specs(o) for v in pod.get("volumes", []) if "emptyDir" in v]
    assert len(empty_dirs) == 6
    assert all(v["emptyDir"].get("sizeLimit") for v in empty_dirs), empty_dirs
    dep = by_key(objects[:-1])[("Deployment", "mongotune-worker")]  # (the Job has a generated name)
    (pod,) = pod_specs(dep)
    (c,) = containers(dep)
    spool = env_of(c)["MONGOTUNE_SPOOL_DIR"]["value"]
    mount = next(m for m in c["volumeMounts"] if spool.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == "mongotune-artifacts"  # not the pod's emptyDir


def test_init_script_is_valid_javascript_and_shared_with_compose(tmp_path):
    script = DEPLOY / "base" / "mongo-init" / "10-mongotune-app-user.js"
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    binds = [v for v in compose["services"]["mongo"]["volumes"] if isinstance(v, dict)]
    assert [(REPO / b["source"]).resolve() for b in binds] == [script.resolve()]
    assert by_key(k8s.load_base())[("ConfigMap", "mongotune-mongo-init")]["data"][script.name] == script.read_text()
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed: the init script's JavaScript syntax was NOT checked")
    copy = tmp_path / "script.js"  # node --check wants a .js file it may read as CommonJS
    copy.write_text(script.read_text())
    res = subprocess.run([node, "--check", str(copy)], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr


def test_library_refuses_a_kustomization_it_cannot_render(tmp_path):
    base = tmp_path / "base"
    shutil.copytree(DEPLOY / "base", base)
    (tmp_path / "jobs").mkdir()
    kfile = base / "kustomization.yaml"
    kust = yaml.safe_load(kfile.read_text())
    kfile.write_text(yaml.safe_dump({**kust, "commonLabels": {"team": "ml"}}))
    with pytest.raises(ConfigError, match="commonLabels"):
        k8s.render(IMAGE, NAMESPACE, 1, manifests=tmp_path)
    kfile.write_text(yaml.safe_dump({**kust, "generatorOptions": {}}))
    with pytest.raises(ConfigError, match="disableNameSuffixHash"):
        k8s.render(IMAGE, NAMESPACE, 1, manifests=tmp_path)
