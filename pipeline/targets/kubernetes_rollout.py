"""The kubernetes target's steps against a cluster: apply, wait for the rollout, undo, prune, probe, delete, keys."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import RenderError, TargetError
from pipeline.targets import keys as keyfile
from pipeline.targets import kubernetes_api as kapi
from pipeline.targets import kubernetes_manifests as km
from pipeline.targets.base import STAMP_MODEL, Live
from pipeline.targets.kubernetes_api import KINDS, ApiError, Cluster, diagnose, pod_failure, rollout_state

if TYPE_CHECKING:
    from pipeline.console import Console
    from pipeline.spec import Spec


def label(obj: Mapping[str, Any]) -> str:
    return f"{obj['kind'].lower()}/{obj['metadata']['name']}"


def apply_all(cluster: Cluster, objects: list[dict[str, Any]], console: Console, name: str) -> None:
    for obj in objects:
        console.progress(f"{name}: applying {label(obj)}")
        try:
            cluster.apply(obj)
        except ApiError as exc:
            raise TargetError(refusal(exc, obj)) from None


def refusal(exc: ApiError, obj: Mapping[str, Any]) -> str:
    causes = "; ".join(exc.causes)
    return f"the API server refused {label(obj)}: {exc}" + (f" ({causes})" if causes and causes not in str(exc) else "")


def wait(
    cluster: Cluster,
    deployment: Mapping[str, Any],
    image: str,
    timeout_s: float,
    console: Console,
    *,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> str:
    """Until the Deployment's new version is available; a pod that cannot start fails it at once."""
    name, namespace = deployment["metadata"]["name"], deployment["metadata"]["namespace"]
    selector = ",".join(f"{k}={v}" for k, v in sorted(deployment["spec"]["selector"]["matchLabels"].items()))
    start = clock()
    while True:
        live = cluster.read("Deployment", name, namespace)
        if live is None:
            raise TargetError(f"deployment {name} disappeared from namespace {namespace} during the rollout")
        done, state = rollout_state(live)
        if done:
            return state
        failing = pod_failure(cluster.pods(namespace, selector), image)
        if failing:
            pod, why = failing
            hint = f"; build and push {image} first (examples/ci/kubernetes.md)" if "image" in why else ""
            details = diagnose(cluster, namespace, selector, image)
            raise TargetError(f"deployment {name}: pod {pod}: {why}{hint}{details}")
        if "deadline exceeded" in state:
            raise TargetError(f"deployment {name}: {state}{diagnose(cluster, namespace, selector, image)}")
        elapsed = clock() - start
        if elapsed > timeout_s:
            raise TargetError(
                f"deployment {name} was not available after {timeout_s} s (deploy.ready_timeout_s): "
                f"{state}{diagnose(cluster, namespace, selector, image)}"
            )
        console.progress(f"deploy: rollout of {name}: {state} ({elapsed:.0f} s)")
        sleep(min(1.0, 0.1 + elapsed / 10))


def undo(cluster: Cluster, previous: Mapping[str, Any] | None, existed: bool, name: str, namespace: str) -> str:
    """After a failed rollout: the previous version's objects again, or (a failed create) nothing left behind."""
    try:
        if previous and previous.get("applied"):
            for obj in previous["applied"]:
                if obj["kind"] != "Secret":  # the record keeps no key material; the live Secret stays as applied
                    cluster.apply(obj)
            return "\nthe previous version was applied again and keeps serving (maxUnavailable 0)"
        if existed:
            return (
                "\nthe objects existed before this deploy and are not recorded here: they stay as applied, and "
                "the pods that were ready keep serving until new ones are (maxUnavailable 0)"
            )
        removed = delete_owned(cluster, name, namespace)
        return f"\nremoved what this deploy created: {', '.join(removed)}" if removed else ""
    except TargetError as exc:
        return f"\n(could not undo the failed rollout: {exc})"


def prune(cluster: Cluster, objects: list[dict[str, Any]], name: str, namespace: str) -> list[str]:
    """Delete what we own but no longer render (an autoscaler after max_replicas was removed, say)."""
    wanted = {(o["kind"], o["metadata"]["name"]) for o in objects}
    removed = []
    for kind in KINDS:
        for live in cluster.owned(kind, namespace, name):
            key = (kind, live["metadata"]["name"])
            if key not in wanted and cluster.delete(kind, key[1], namespace):
                removed.append(f"{kind.lower()}/{key[1]}")
    return removed


def delete_owned(cluster: Cluster, name: str, namespace: str) -> list[str]:
    """Exactly the objects that carry our labels for this service: never anything else in the namespace."""
    removed = []
    for kind in reversed(list(KINDS)):  # the Deployment before what it mounts
        for live in cluster.owned(kind, namespace, name):
            if cluster.delete(kind, live["metadata"]["name"], namespace):
                removed.append(f"{kind.lower()}/{live['metadata']['name']}")
    return removed


def probe(
    cluster: Cluster, record: Mapping[str, Any], spec: Spec | None, name: str, namespace: str, *, recorded: bool
) -> Live:
    """Health from the Deployment's status, drift from the recorded objects, the stamp, and what applying the
    spec would do (a server-side dry run, whose refusal plan shows as its error)."""
    deployment = cluster.read("Deployment", name, namespace)
    preview, refused = _preview(cluster, spec) if spec is not None else ("", None)
    if deployment is None:
        if recorded:
            return Live(
                True,
                False,
                f"deployment {name} not found in namespace {namespace}",
                (f"deployment/{name}: recorded, but missing from the cluster",),
                refusal=refused,
                found=False,
            )
        return Live(
            True,
            False,
            f"the cluster at {cluster.server} is reachable; namespace {namespace} has no deployment {name} yet",
            refusal=refused,
            found=False,
        )
    done, state = rollout_state(deployment)
    available = next(
        (c for c in (deployment.get("status") or {}).get("conditions") or [] if c.get("type") == "Available"), None
    )
    if available is not None and available.get("status") != "True":
        why = available.get("reason") or available.get("message") or "no reason given"
        done, state = False, f"not available ({why})"
    drift = [f"deployment/{name}: {d}" for d in applied_diff(_recorded(record, "Deployment", name), deployment)]
    for obj in record.get("applied") or []:
        if obj["kind"] == "Deployment":
            continue
        live = cluster.read(obj["kind"], obj["metadata"]["name"], namespace)
        if live is None:
            drift.append(f"{label(obj)}: recorded, but missing from the cluster")
        elif obj["kind"] != "Secret":
            drift.extend(f"{label(obj)}: {d}" for d in applied_diff(obj, live))
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    stamp = km.read_stamp(annotations)
    image = deployment["spec"]["template"]["spec"]["containers"][0].get("image")
    detail = f"deployment {name} in namespace {namespace}: {state}, image {image}"
    if not recorded:
        digest = annotations.get(km.DIGEST_KEY, "")
        detail += f"; it is not recorded here (rendered digest {digest[:12] or 'none'})"
    if preview:
        detail += f"; {preview}"
    return Live(
        True, done, detail, tuple(drift), refusal=refused, found=True, stamp=stamp, observed=observed(deployment, stamp)
    )


def observed(deployment: Mapping[str, Any], stamp: Mapping[str, str] | None) -> dict[str, Any]:
    """What the live Deployment shows of the spec, by the deploy inputs' field names: a stateless plan's diff."""
    meta = deployment.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    out: dict[str, Any] = {"description": annotations.get(km.DESCRIPTION_KEY, "")}
    try:
        tags = json.loads(annotations[km.TAGS_KEY])
        out.update({f"tags.{k}": v for k, v in tags.items()} if tags else {"tags": {}})
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    limits = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [{}]
    limits = (limits[0].get("resources") or {}).get("limits") or {}
    from kubernetes.utils.quantity import parse_quantity

    for key, field, unit in (("cpu", "deploy.cpu_cores", 1), ("memory", "deploy.memory_gb", 1024**3)):
        try:
            value = parse_quantity(limits[key]) / unit
        except (KeyError, TypeError, ValueError):
            continue
        out[field] = int(value) if value == int(value) else float(value)
    if stamp and stamp.get(STAMP_MODEL):
        out["model.sha256"] = stamp[STAMP_MODEL]
    return out


def _recorded(record: Mapping[str, Any], kind: str, name: str) -> Mapping[str, Any]:
    return next((o for o in record.get("applied") or [] if o["kind"] == kind and o["metadata"]["name"] == name), {})


def _preview(cluster: Cluster, spec: Spec) -> tuple[str, str | None]:
    """(what applying the spec now would change, the API server's refusal of a dry run) for plan and status."""
    from pipeline import render

    try:
        files = render.render_all(spec)
    except RenderError:
        return "", None  # the render stage reports it
    objects = [
        o
        for name, text in sorted(files.items())
        if name.startswith("k8s/") and name != "k8s/kustomization.yaml"
        for o in km.documents(text, name)
    ]
    changes: list[str] = []
    for obj in objects:
        try:
            cluster.apply(obj, dry_run=True)
        except ApiError as exc:
            return "", f"server-side dry run: {refusal(exc, obj)}"
        live = cluster.read(obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"])
        if live is None:
            changes.append(f"{label(obj)} would be created")
        else:
            changes.extend(f"{label(obj)} {d}" for d in applied_diff(obj, live))
    if not changes:
        return "the server accepts a dry run of the spec and nothing would change", None
    shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
    return f"the server accepts a dry run; applying would change: {shown}", None


def applied_diff(applied: Any, live: Any, path: str = "") -> list[str]:
    """Every field we apply whose live value differs (fields the server adds are not ours to compare)."""
    if isinstance(applied, Mapping):
        if not isinstance(live, Mapping):
            return [f"{path or '(object)'}: live {_show(live)}, applied {_show(applied)}"]
        out: list[str] = []
        for key, value in applied.items():
            if path == "" and key in ("status",):
                continue
            out.extend(applied_diff(value, live.get(key), f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(applied, list):
        if not isinstance(live, list):
            return [f"{path}: live {_show(live)}, applied {_show(applied)}"]
        named = all(isinstance(i, Mapping) and "name" in i for i in applied)
        out = []
        for index, item in enumerate(applied):
            if named:
                match = next((x for x in live if isinstance(x, Mapping) and x.get("name") == item["name"]), None)
                where = f"{path}[{item['name']}]"
            else:
                match = live[index] if index < len(live) else None
                where = f"{path}[{index}]"
            out.extend(applied_diff(item, match, where))
        if not named and len(live) != len(applied):
            out.append(f"{path}: live has {len(live)} items, applied {len(applied)}")
        return out
    if applied == live or _same_quantity(path, applied, live):
        return []
    return [f"{path}: live {_show(live)}, applied {_show(applied)}"]


def _same_quantity(path: str, a: Any, b: Any) -> bool:
    # the API server stores quantities canonically: 1024Mi comes back as 1Gi
    if ".resources." not in f".{path}" or a is None or b is None:
        return False
    from kubernetes.utils.quantity import parse_quantity

    try:
        return parse_quantity(a) == parse_quantity(b)
    except (ValueError, TypeError):
        return False


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- what deploy sends besides the rendered files ---------------------------------------------------
def manifests(build_dir: Path) -> list[dict[str, Any]]:
    """The rendered objects, in apply order: config first, the Deployment after what it mounts."""
    import yaml

    order = {kind: i for i, kind in enumerate(kapi.KINDS)}
    folder = build_dir / "k8s"
    try:
        # exactly the files kustomization.yaml lists: a stale file left in the folder is never applied
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8")) or {}
        objects = [
            obj
            for name in kustomization.get("resources") or []
            for obj in km.documents((folder / name).read_text(encoding="utf-8"), f"k8s/{name}")
        ]
    except (OSError, yaml.YAMLError, RenderError) as exc:
        raise TargetError(f"{folder}: cannot read the rendered manifests ({exc}): render again") from None
    if not any(o["kind"] == "Deployment" for o in objects):
        raise TargetError(f"{build_dir}/k8s has no Deployment: render again")
    return sorted(objects, key=lambda o: order.get(o["kind"], len(order)))


def keys(cluster: kapi.Cluster, name: str, namespace: str, service_dir: Path, *, create: bool) -> str:
    """The primary key: kept here, else read back from the live Secret (a fresh runner must not rotate the keys);
    with `create` (deploy), new keys when there are none anywhere."""
    try:
        return keyfile.read_primary(service_dir)
    except TargetError:
        live = kapi.secret_keys(cluster, f"{name}-keys", namespace)
        if live is None and not create:
            raise
    if live is not None:
        keyfile.write(service_dir, live["primary"], live.get("secondary"))
    else:
        keyfile.ensure(service_dir, True)
    return keyfile.read_primary(service_dir)


def keys_secret(spec: Spec, namespace: str, service_dir: Path) -> dict[str, Any]:
    """deploy.auth's keys as a Secret the Deployment mounts; never rendered into a file anyone reviews."""
    text = (service_dir / keyfile.KEYS_FILE).read_text(encoding="utf-8")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": f"{spec.name}-keys",
            "namespace": namespace,
            "labels": {km.INSTANCE_LABEL: spec.name, km.NAME_LABEL: spec.name, km.MANAGED_LABEL: "pipeline"},
        },
        "stringData": {keyfile.KEYS_FILE: text},
    }


def secret_stub(secret: Mapping[str, Any]) -> dict[str, Any]:
    """What the record keeps of the keys Secret: its name, never its data."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": dict(secret["metadata"])}
