"""Kubernetes manifests for MongoDB and the GPU worker pool, rendered for one cluster.

The manifests live in ``deploy/kubernetes`` of the repository: a kustomize base (``base/``) that
``kubectl apply -k`` takes as it is, overlays, and the coordinator Job template (``jobs/``).
This module reads them and applies what ``kustomize edit set image/namespace/replicas`` would
put into an overlay, so that users without kustomize get the same objects:

* :func:`render` gives the base's objects with the worker image, the namespace and the number of
  workers set, optionally pointed at an external MongoDB (the in-cluster one removed);
* :func:`coordinator_job` gives a Job that runs ``mongotune launch``/``resume`` on the pool;
* :func:`to_yaml` and :func:`write_manifests` turn objects into a YAML stream or a folder that
  ``kubectl apply -k`` takes.

Only the part of kustomize that the base uses is understood (file resources and a ConfigMap
generator without name hashes); anything else is refused rather than rendered wrongly.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError

#: the image name the base and the Job template use for mongotune; rendering replaces it
WORKER_IMAGE = "mongotune-worker"
WORKER_DEPLOYMENT = "mongotune-worker"
CONFIG_MAP = "mongotune-config"
URL_KEY = "MONGOTUNE_MONGO"
COMPONENT_LABEL = "app.kubernetes.io/component"
#: objects of the in-cluster MongoDB carry this component label; an external URL drops them
MONGODB_COMPONENT = "mongodb"
JOB_COMMANDS = ("launch", "resume")

_RENDER_MARK = "# Written by `mongotune k8s render`; `kubectl apply -k` this folder."
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                   "CustomResourceDefinition", "PriorityClass", "RuntimeClass", "IngressClass"}
_POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

# The image reference grammar of the OCI distribution spec: [domain[:port]/]path[:tag][@digest].
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?")
_PATH_PART = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_IMAGE_HINT = "expected [registry[:port]/]name[:tag][@sha256:digest] with a lower-case name"


# ---------------------------------------------------------------- input checks
def check_image(ref: str) -> str:
    """Return ``ref`` if it is a valid container image reference, else raise ``ConfigError``."""
    if not isinstance(ref, str) or not ref or ref != ref.strip():
        raise ConfigError(f"bad image reference {ref!r}: {_IMAGE_HINT}")
    name, at, digest = ref.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise ConfigError(f"bad image reference {ref!r}: bad digest {digest!r} ({_IMAGE_HINT})")
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a ':' after the last '/' starts the tag (before it, it is a registry port)
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise ConfigError(f"bad image reference {ref!r}: bad tag {tag!r} ({_IMAGE_HINT})")
    parts = name.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _DOMAIN.fullmatch(first):
            raise ConfigError(f"bad image reference {ref!r}: bad registry {first!r} ({_IMAGE_HINT})")
        parts = parts[1:]
    for part in parts:
        if not _PATH_PART.fullmatch(part):
            raise ConfigError(f"bad image reference {ref!r}: bad name component {part!r} ({_IMAGE_HINT})")
    if len(name) > 255:
        raise ConfigError(f"bad image reference {ref!r}: the name is longer than 255 characters")
    return ref


def check_namespace(namespace: str) -> str:
    """A namespace is a DNS label: lower-case letters, digits and '-', at most 63 characters."""
    if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        raise ConfigError(f"bad namespace {namespace!r}: expected a DNS label (lower-case letters, digits "
                          "and '-', starting and ending with a letter or digit, at most 63 characters)")
    return namespace


def check_workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers!r} "
                          "(scale the Deployment to 0 to pause the pool)")
    return workers


def check_mongo_url(url: str) -> str:
    """An external MongoDB URL for the ConfigMap: it must parse and must carry no password."""
    if not isinstance(url, str):
        raise ConfigError(f"bad --mongo-url {url!r}")
    scheme, sep, rest = url.partition("://")
    # Credentials end at the last '@' before the query; a password may hold '/', '#' or '@'.
    head = rest.split("?", 1)[0]
    userinfo, at, hosts = head.rpartition("@")
    if sep and at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        raise ConfigError(f"--mongo-url {scheme}://{user}:***@{hosts}... holds a password, which would be stored "
                          "in a ConfigMap: leave it out and put it in the mongotune-mongo-app Secret (workers "
                          "read it as MONGOTUNE_MONGO_PASSWORD)")
    from ..store import parse_mongo_url

    parse_mongo_url(url)  # a ConnectionFailure (a UserError) names what is wrong
    return url


def check_job_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        raise ConfigError(f"bad Job name {name!r}: expected lower-case letters, digits and '-', "
                          "starting and ending with a letter or digit, at most 63 characters")
    return name


# ---------------------------------------------------------------- reading the manifests
def manifests_dir(path: str | Path | None = None) -> Path:
    """The folder with ``base/`` and ``jobs/``: ``path``, else ``deploy/kubernetes`` of this checkout."""
    candidates = [Path(path).expanduser()] if path else [Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"]
    for cand in candidates:
        if (cand / "base" / "kustomization.yaml").is_file():
            return cand
        if cand.name == "base" and (cand / "kustomization.yaml").is_file():
            return cand.parent
    where = candidates[0]
    raise ConfigError(f"no Kubernetes manifests at {where}: pass --manifests with the deploy/kubernetes folder "
                      "of a mongotune checkout")


def _yaml():
    import yaml

    return yaml


def _load_yaml_docs(path: Path) -> list[dict]:
    yaml = _yaml()
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise ConfigError(f"{path}: every document must be a Kubernetes object with apiVersion and kind")
    return docs


_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions"}


def load_base(root: str | Path | None = None) -> list[dict]:
    """The objects of ``base/kustomization.yaml`` exactly as ``kubectl kustomize base`` builds them."""
    base = manifests_dir(root) / "base"
    kfile = base / "kustomization.yaml"
    docs = _load_yaml_docs(kfile)
    if len(docs) != 1 or docs[0].get("kind") != "Kustomization":
        raise ConfigError(f"{kfile} must hold one Kustomization")
    kust = docs[0]
    unknown = set(kust) - _KUSTOMIZATION_KEYS
    if unknown:
        raise ConfigError(f"{kfile}: {', '.join(sorted(unknown))} not understood by mongotune's renderer; "
                          "use kubectl kustomize")
    objects: list[dict] = []
    for res in kust.get("resources") or []:
        path = base / res
        if not path.is_file():
            raise ConfigError(f"{kfile}: resource {res!r} is not a file in {base}")
        objects.extend(_load_yaml_docs(path))
    global_opts = kust.get("generatorOptions") or {}
    for gen in kust.get("configMapGenerator") or []:
        objects.append(_config_map(base, kfile, gen, global_opts))
    return objects


def _config_map(base: Path, kfile: Path, gen: dict, global_opts: dict) -> dict:
    opts = {**global_opts, **(gen.get("options") or {})}
    if not opts.get("disableNameSuffixHash"):
        raise ConfigError(f"{kfile}: configMapGenerator {gen.get('name')!r} needs disableNameSuffixHash "
                          "for mongotune's renderer; use kubectl kustomize")
    if set(gen) - {"name", "files", "literals", "options"}:
        raise ConfigError(f"{kfile}: configMapGenerator {gen.get('name')!r} uses options mongotune's "
                          "renderer does not understand; use kubectl kustomize")
    data: dict[str, str] = {}
    for entry in gen.get("files") or []:
        key, eq, rel = entry.partition("=")
        if not eq:
            key, rel = Path(entry).name, entry
        try:
            data[key] = (base / rel).read_text()
        except OSError as exc:
            raise ConfigError(f"{kfile}: cannot read {rel}: {exc}") from None
    for entry in gen.get("literals") or []:
        key, _, value = entry.partition("=")
        data[key] = value
    meta: dict[str, Any] = {"name": gen["name"]}
    for field in ("labels", "annotations"):
        if opts.get(field):
            meta[field] = dict(opts[field])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


# ---------------------------------------------------------------- transforms (kustomize's)
def _pod_specs(obj: dict) -> Iterable[dict]:
    spec = obj.get("spec") or {}
    if obj.get("kind") in _POD_OWNERS:
        yield (spec.get("template") or {}).get("spec") or {}
    elif obj.get("kind") == "CronJob":
        yield (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    elif obj.get("kind") == "Pod":
        yield spec


def image_name(image: str) -> str:
    """The name part of an image reference: no tag, no digest."""
    name = image.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    return name[:colon] if colon > slash else name


def set_image(objects: list[dict], name: str, image: str) -> int:
    """Replace every container image named ``name`` (any tag) with ``image``; returns how many."""
    n = 0
    for obj in objects:
        for pod in _pod_specs(obj):
            for key in ("initContainers", "containers"):
                for c in pod.get(key) or []:
                    if image_name(str(c.get("image", ""))) == name:
                        c["image"] = image
                        n += 1
    return n


def set_namespace(objects: list[dict], namespace: str) -> None:
    for obj in objects:
        if obj.get("kind") not in _CLUSTER_SCOPED:
            meta = obj.setdefault("metadata", {})
            meta.pop("namespace", None)
            # next to the name, where people look for it
            items = list(meta.items())
            at = next((i + 1 for i, (k, _) in enumerate(items) if k in ("name", "generateName")), 0)
            obj["metadata"] = dict(items[:at] + [("namespace", namespace)] + items[at:])


def set_replicas(objects: list[dict], name: str, count: int) -> None:
    for obj in objects:
        if obj.get("kind") in ("Deployment", "StatefulSet", "ReplicaSet") and obj["metadata"].get("name") == name:
            obj.setdefault("spec", {})["replicas"] = count
            return
    raise ConfigError(f"the manifests have no Deployment named {name!r}")


def use_external_mongo(objects: list[dict], url: str) -> list[dict]:
    """Drop the in-cluster MongoDB and point the pool's ConfigMap at ``url``."""
    kept = [o for o in objects
            if ((o.get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL) != MONGODB_COMPONENT]
    for obj in kept:
        if obj["kind"] == "ConfigMap" and obj["metadata"].get("name") == CONFIG_MAP:
            obj.setdefault("data", {})[URL_KEY] = url
            return kept
    raise ConfigError(f"the manifests have no ConfigMap named {CONFIG_MAP!r}")


# ---------------------------------------------------------------- public API
def render(image: str, namespace: str, workers: int, mongo_url: str | None = None,
           manifests: str | Path | None = None) -> list[dict]:
    """The base's objects for one cluster: worker image, namespace, pool size, MongoDB."""
    check_image(image)
    check_namespace(namespace)
    check_workers(workers)
    if mongo_url is not None:
        check_mongo_url(mongo_url)
    objects = copy.deepcopy(load_base(manifests))
    if mongo_url is not None:
        objects = use_external_mongo(objects, mongo_url)
    if not set_image(objects, WORKER_IMAGE, image):
        raise ConfigError(f"no container in the manifests uses the image {WORKER_IMAGE!r}")
    set_replicas(objects, WORKER_DEPLOYMENT, workers)
    set_namespace(objects, namespace)
    return objects


def coordinator_job(image: str, namespace: str, args: list[str], name: str | None = None,
                    manifests: str | Path | None = None) -> dict:
    """A Job running ``mongotune ARGS`` (``launch ...`` or ``resume ...``) beside the worker pool.

    Without ``name`` the Job gets a generated one (``mongotune-launch-xxxxx``): create it with
    ``kubectl create``, which, unlike ``apply``, fills it in.
    """
    check_image(image)
    check_namespace(namespace)
    if name is not None:
        check_job_name(name)
    args = [str(a) for a in args]
    if not args or args[0] not in JOB_COMMANDS:
        raise ConfigError(f"the coordinator Job runs {' or '.join(JOB_COMMANDS)}, got "
                          f"{args[0] if args else 'nothing'!r} (e.g. -- launch baseline --max-evals 20)")
    for a in args[1:]:
        opt = a.split("=", 1)[0]
        if opt == "--mongo":
            raise ConfigError("the coordinator Job reads the MongoDB URL from the mongotune-config ConfigMap "
                              "and the password from the mongotune-mongo-app Secret: leave --mongo out")
        if opt == "--workers":
            raise ConfigError("the coordinator Job trains nothing: the mongotune-worker Deployment is the pool; "
                              "leave --workers out and scale the Deployment")
    if "--quiet" not in args and "-q" not in args:
        args.append("--quiet")  # progress lines, not a live table, in `kubectl logs`
    path = manifests_dir(manifests) / "jobs" / "coordinator.yaml"
    docs = _load_yaml_docs(path)
    if len(docs) != 1 or docs[0].get("kind") != "Job":
        raise ConfigError(f"{path} must hold one Job")
    job = copy.deepcopy(docs[0])
    meta = job.setdefault("metadata", {})
    if name:
        meta.pop("generateName", None)
        meta["name"] = name
    else:
        meta.pop("name", None)
        meta["generateName"] = f"mongotune-{args[0]}-"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    container["args"] = args
    if not set_image([job], WORKER_IMAGE, image):
        raise ConfigError(f"{path}: its container does not use the image {WORKER_IMAGE!r}")
    set_namespace([job], namespace)
    return job


def _dumper():
    yaml = _yaml()

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper


def to_yaml(objects: list[dict]) -> str:
    """A multi-document YAML stream (``kubectl apply -f -`` takes it)."""
    yaml = _yaml()
    dumper = _dumper()
    return "---\n".join(yaml.dump(o, Dumper=dumper, sort_keys=False, default_flow_style=False, width=1000)
                        for o in objects)


def file_name(obj: dict) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def write_manifests(objects: list[dict], out_dir: str | Path) -> list[Path]:
    """One file per object and a ``kustomization.yaml`` listing them; returns the files written.

    A folder from an earlier render is replaced (its listed files are removed first); any other
    folder must be empty or absent.
    """
    yaml = _yaml()
    out = Path(out_dir).expanduser()
    kfile = out / "kustomization.yaml"
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out} is not a folder")
        if kfile.is_file() and kfile.read_text().startswith(_RENDER_MARK):
            old = yaml.safe_load(kfile.read_text()) or {}
            for rel in old.get("resources") or []:
                (out / Path(rel).name).unlink(missing_ok=True)
            kfile.unlink()
        elif any(out.iterdir()):
            raise ConfigError(f"--out {out} is not empty and was not written by `mongotune k8s render`")
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for obj in objects:
            path = out / file_name(obj)
            path.write_text(to_yaml([obj]))
            written.append(path)
        kust = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [p.name for p in written]}
        kfile.write_text(_RENDER_MARK + "\n" + yaml.safe_dump(kust, sort_keys=False))
    except OSError as exc:
        raise ConfigError(f"cannot write to {out}: {exc.strerror or exc}") from None
    return [*written, kfile]
