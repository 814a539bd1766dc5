"""The kubernetes target's offline half: names, labels, quantities, the image tag, and validation of manifests."""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import RenderError, UsageError
from pipeline.files import sha256_bytes
from pipeline.targets.base import STAMP_KEYS

# Imported by the target's rules, so this module must not import pipeline.spec or the kubernetes client.

PREFIX = "ml-deploy-pipeline"  # the domain of our labels and annotations
FIELD_MANAGER = "pipeline"  # server-side apply's field manager
DIGEST_KEY = f"{PREFIX}/inputs-digest"  # on every object: the digest of everything rendered
SPEC_KEY = f"{PREFIX}/spec"
TAGS_KEY = f"{PREFIX}/tags"  # the spec's tags, exactly, as JSON (labels can only carry some)
MODEL_KEY = f"{PREFIX}/model"
DESCRIPTION_KEY = "kubernetes.io/description"
TAG_LABEL_PREFIX = f"tag.{PREFIX}/"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_LABEL = "app.kubernetes.io/managed-by"
# kubernetes-validate 1.37 bundles the schemas of 1.25-1.37: the oldest and newest minor versions we support
VALIDATE_VERSIONS = ("1.30", "1.37")
CONTAINER_PORT = 8080
SERVICE_PORT = 80
RUN_AS = 10001  # a numeric user, so runAsNonRoot can be verified by the kubelet
APP_DIR = "/app"
KEYS_DIR = "/etc/pipeline/keys"
# rendered first with this digest, then every occurrence is replaced by the digest of the rendered files
DIGEST_PLACEHOLDER = "0" * 64
IMAGE_FILES = "image/"

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# the reference grammar of distribution/reference: [host[:port]/]path[:tag][@digest]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?)"
IMAGE_REFERENCE = re.compile(
    rf"(?P<repo>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)


def is_label_key(key: str) -> bool:
    """A label or annotation key: [DNS-1123 subdomain prefix/]name, name at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.fullmatch(name))


def is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_LABEL_NAME.fullmatch(value)))


def label_value(text: str) -> str | None:
    """`text` made a valid label value (at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends), or None."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")
    return cleaned if cleaned and is_label_value(cleaned) else None


def tag_labels(tags: Mapping[str, str]) -> dict[str, str]:
    """The spec's tags that can be labels, cleaned up; the exact tags go into an annotation as well."""
    out: dict[str, str] = {}
    for key in sorted(tags):
        name, value = label_value(key), label_value(str(tags[key])) or ""
        if name is None or len(name) > 63 or TAG_LABEL_PREFIX + name in out:
            continue  # nothing usable left, or it collides with an earlier tag once cleaned up
        out[TAG_LABEL_PREFIX + name] = value
    return out


def cpu_quantity(cores: float) -> str:
    """cpu_cores as a Kubernetes quantity: 1 -> "1", 0.5 -> "500m"."""
    milli = round(cores * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def memory_quantity(gb: float) -> str:
    """memory_gb in MiB, as the local target enforces it (memory_gb * 1024 MB)."""
    return f"{int(gb * 1024)}Mi"


def workers(cores: float) -> int:
    return max(1, math.ceil(cores))


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference; UsageError when it is not one."""
    match = IMAGE_REFERENCE.fullmatch(image)
    if not match or len(match["repo"]) > 255:
        raise UsageError(f"{image!r} is not an image reference such as registry.example.com/team/mnist[:tag]")
    return match["repo"], match["tag"], match["digest"]


def image_problem(image: str) -> str | None:
    try:
        split_image(image)
    except UsageError as exc:
        return str(exc)
    return None


def context_digest(files: Mapping[str, str], model_name: str, model_sha256: str) -> str:
    """The content digest of the image build context: its text files and the model's bytes (by their sha256)."""
    parts = {name: sha256_bytes(text.encode()) for name, text in files.items() if name.startswith(IMAGE_FILES)}
    parts[IMAGE_FILES + model_name] = model_sha256
    return sha256_bytes(json.dumps(parts, sort_keys=True).encode())


def image_reference(image: str, context: str) -> str:
    """The image to run: as given when it has a tag or digest, else tagged with the build context's digest."""
    repository, tag, digest = split_image(image)
    if tag or digest:
        return image
    return f"{repository}:{context[:20]}"


def stamp(files: dict[str, str]) -> str:
    """Replace the placeholder by the digest of everything rendered (placeholder included): one value, all objects."""
    digest = sha256_bytes(json.dumps({n: sha256_bytes(t.encode()) for n, t in files.items()}, sort_keys=True).encode())
    for name in list(files):
        files[name] = files[name].replace(DIGEST_PLACEHOLDER, digest)
    return digest


def stamp_annotations(stamp: Mapping[str, str]) -> dict[str, str]:
    """The deploy stage's stamp (inputs digest, model, spec, version) as annotations, applied at deploy time only:
    the rendered files stay what the reviewer saw."""
    return {f"{PREFIX}/{key}": str(value) for key, value in stamp.items() if key in STAMP_KEYS}


def read_stamp(annotations: Mapping[str, Any]) -> dict[str, str] | None:
    """The stamp a live object carries, or None when deploy never stamped it (applied by hand, or by GitOps)."""
    found = {key: str(annotations[f"{PREFIX}/{key}"]) for key in STAMP_KEYS if f"{PREFIX}/{key}" in annotations}
    return found or None


def documents(text: str, name: str) -> list[dict[str, Any]]:
    import yaml

    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise RenderError(f"rendered {name} is not valid YAML: {exc}") from None
    for doc in docs:
        if not isinstance(doc, dict) or not doc.get("kind") or not doc.get("apiVersion"):
            raise RenderError(f"rendered {name}: every document must be a Kubernetes object with apiVersion and kind")
    return docs


def validate(files: Mapping[str, str], versions: Iterable[str] = VALIDATE_VERSIONS) -> list[dict[str, Any]]:
    """Every object in the rendered k8s/ files, checked against Kubernetes' own schemas (strict) and metadata rules."""
    try:
        import kubernetes_validate
    except ImportError:
        raise UsageError("target 'kubernetes' needs the kubernetes extra: pip install '.[kubernetes]'") from None
    objects = []
    for name, text in sorted(files.items()):
        if not name.startswith("k8s/") or name == "k8s/kustomization.yaml":
            continue
        for obj in documents(text, name):
            where = f"rendered {name} ({obj['kind']} {obj.get('metadata', {}).get('name', '?')})"
            for version in versions:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    field = ".".join(str(p) for p in exc.path) or "(the object)"
                    raise RenderError(
                        f"{where} is not valid for Kubernetes {exc.version}: {field}: {exc.message}"
                    ) from None
                except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
                    raise RenderError(f"{where}: {exc.message}") from None
            problem = metadata_problem(obj)
            if problem:
                raise RenderError(f"{where}: {problem}")
            objects.append(obj)
    check_kustomization(files)
    return objects


def metadata_problem(obj: Mapping[str, Any]) -> str | None:
    """What the schemas leave to the API server: names, label and annotation syntax, annotation size."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    if not (len(name) <= 63 and DNS1123_LABEL.fullmatch(name)):
        return f"metadata.name: {name!r} is not a DNS-1123 label (at most 63 of a-z, 0-9 and '-')"
    namespace = meta.get("namespace")
    if namespace is not None and not (len(namespace) <= 63 and DNS1123_LABEL.fullmatch(namespace)):
        return f"metadata.namespace: {namespace!r} is not a DNS-1123 label"
    spots = [("metadata", meta)]
    template = ((obj.get("spec") or {}).get("template") or {}).get("metadata")
    if template:
        spots.append(("spec.template.metadata", template))
    for where, block in spots:
        for key, value in (block.get("labels") or {}).items():
            if not is_label_key(key):
                return f"{where}.labels: {key!r} is not a valid label key"
            if not isinstance(value, str) or not is_label_value(value):
                return f"{where}.labels.{key}: {value!r} is not a valid label value (at most 63 of [A-Za-z0-9-_.])"
        annotations = block.get("annotations") or {}
        for key in annotations:
            if not is_label_key(key):
                return f"{where}.annotations: {key!r} is not a valid annotation key"
        if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 256 * 1024:
            return f"{where}.annotations: more than 256 KiB in total"
    return None


def check_kustomization(files: Mapping[str, str]) -> None:
    """kustomization.yaml must list exactly the other manifests, so `kubectl apply -k` takes them all."""
    import yaml

    text = files.get("k8s/kustomization.yaml")
    if text is None:
        raise RenderError("the kubernetes target must render k8s/kustomization.yaml")
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RenderError(f"rendered k8s/kustomization.yaml is not valid YAML: {exc}") from None
    listed = sorted(doc.get("resources") or [])
    present = sorted(n.removeprefix("k8s/") for n in files if n.startswith("k8s/") and n != "k8s/kustomization.yaml")
    if listed != present:
        raise RenderError(f"rendered k8s/kustomization.yaml: resources lists {listed}, but the folder holds {present}")


def host_sources() -> dict[str, str]:
    """The scoring host's own sources, for the image: it runs `python -m pipeline.serve` as the local target does.

    pipeline.serve and every pipeline module it imports (found in the sources, so a new import is never missed),
    with the package's __init__.py files; nothing else of the package goes into the image.
    """
    package = Path(__file__).resolve().parent.parent
    wanted = {f"serve/{p.name}" for p in (package / "serve").glob("*.py")} | {"__init__.py", "serve/__init__.py"}
    todo = sorted(wanted)
    while todo:
        for module in _imported(package / todo.pop()):
            for name in (f"{module}.py", f"{module}/__init__.py"):
                if name not in wanted and (package / name).is_file():
                    wanted.add(name)
                    todo.append(name)
    return {f"{IMAGE_FILES}pipeline/{name}": (package / name).read_text(encoding="utf-8") for name in sorted(wanted)}


def _imported(path: Path) -> set[str]:
    """The pipeline modules a source file imports, anywhere in it, as paths relative to the package."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]  # a module or a name
        else:
            continue
        found.update(n.removeprefix("pipeline.").replace(".", "/") for n in names if n.startswith("pipeline."))
    return found
