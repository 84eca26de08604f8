"""The Kubernetes kit, deploy/kubernetes/ (docs/kubernetes.md): valid, offline, and holding what the docs promise.

No API server runs here. The Kubernetes kinds are validated (strictly: an unknown field fails) against the
OpenAPI schemas that the kubernetes-validate package bundles, for the oldest and the newest version it knows
of that the kit targets; the KEDA kinds, which it has no schema for, against tests/kubernetes/keda-v1alpha1.schema.json.
The invariants are checked on the parsed manifests, and the commands in them are parsed by the command lines
that will run them: drainctl's and Celery's own.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from celery import Celery
from celery.bin.base import CLIContext
from celery.bin.worker import worker as celery_worker

from drainctl import ready_file
from drainctl.cli import main as drainctl_cli
from drainctl.core.entrypoint_drain import worker_command

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMA = json.loads((Path(__file__).parent / "kubernetes" / "keda-v1alpha1.schema.json").read_text())
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# The oldest Kubernetes the kit is for (PodDisruptionBudget's unhealthyPodEvictionPolicy is on by default
# from 1.27), and the newest the installed kubernetes-validate knows.
VERSIONS = ["1.29", kubernetes_validate.latest_version()]
# The drain's own steps (connect, snapshot, cancel, confirm) and the worker's exit, on top of the tasks.
DRAIN_OVERHEAD_S = 60


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KIT.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def one(kind: str) -> dict[str, Any]:
    docs = [doc for _, doc in manifests() if doc["kind"] == kind]
    assert len(docs) == 1, f"{kind}: {len(docs)} in {KIT}"
    return docs[0]


def validate_keda(doc: dict[str, Any]) -> None:
    schema = {"$ref": f"#/$defs/{doc['kind']}", "$defs": KEDA_SCHEMA["$defs"]}
    jsonschema.Draft202012Validator(schema).validate(doc)


def container() -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def option(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} in {argv}"
    return argv[argv.index(name) + 1]


def celery_worker_params(argv: list[str]) -> dict[str, Any]:
    """`celery -A APP worker OPTIONS` parsed by Celery's own `worker` command (unknown options fail)."""
    assert argv[:2] == ["celery", "-A"] and argv[3] == "worker", argv
    app = Celery(argv[2], set_as_current=False)
    context = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    return dict(celery_worker.make_context("worker", argv[4:], obj=context).params)


# --------------------------------------------------------------------------- schemas

def docs(keda: bool) -> list[Any]:
    return [pytest.param(doc, id=f"{name}:{doc['kind']}") for name, doc in manifests()
            if (doc["kind"] in KEDA_KINDS) == keda]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("doc", docs(keda=False))
def test_the_kubernetes_kinds_validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)  # SchemaNotFoundError for a kind it does not know


@pytest.mark.parametrize("doc", docs(keda=True))
def test_the_keda_kinds_validate(doc: dict[str, Any]) -> None:
    validate_keda(doc)


def test_the_validation_catches_a_misspelt_field() -> None:
    deployment = copy.deepcopy(one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"periodSeconds": 5}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    scaled = copy.deepcopy(one("ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["value"] = 8  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        validate_keda(scaled)
    auth = copy.deepcopy(one("TriggerAuthentication"))
    auth["spec"]["secretTargetRef"][0]["secret"] = "inline"
    with pytest.raises(jsonschema.ValidationError):
        validate_keda(auth)


def test_the_validation_works_offline() -> None:
    """In a fresh interpreter where any socket connection or name lookup raises."""
    code = (
        "import sys\n"
        "def deny(event, args):\n"
        "    if event in ('socket.connect', 'socket.getaddrinfo', 'socket.gethostbyname', 'urllib.Request'):\n"
        "        raise RuntimeError(f'network used: {event} {args}')\n"
        "sys.addaudithook(deny)\n"
        "import pathlib, yaml, kubernetes_validate\n"
        "count = 0\n"
        "for path in sorted(pathlib.Path(sys.argv[1]).glob('*.yaml')):\n"
        "    for doc in yaml.safe_load_all(path.read_text()):\n"
        "        if doc and doc['apiVersion'].split('/')[0] in ('apps', 'policy', 'v1'):\n"
        "            kubernetes_validate.validate(doc, sys.argv[2], strict=True)\n"
        "            count += 1\n"
        "print(count)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(KIT), VERSIONS[-1]], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"  # the Deployment and the PodDisruptionBudget


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KIT / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert sorted(listed) == sorted(p.name for p in KIT.glob("*.yaml") if p.name != "kustomization.yaml")
    assert set(kustomization) == {"apiVersion", "kind", "resources"}


# --------------------------------------------------------------------------- invariants

def test_a_rollout_surges_one_pod_and_takes_none_away_first() -> None:
    spec = one("Deployment")["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert spec["minReadySeconds"] > 0


def test_no_prestop_hook_and_no_liveness_probe_on_consuming() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    for each in pod["containers"] + pod.get("initContainers", []):
        assert "preStop" not in each.get("lifecycle", {}), each["name"]
        assert "livenessProbe" not in each, each["name"]


def test_the_container_runs_the_worker_under_the_entrypoint_with_a_ready_file() -> None:
    argv = container()["command"] + container()["args"]
    assert argv[:2] == ["drainctl", "entrypoint"]
    params = drainctl_cli.commands["entrypoint"].make_context("entrypoint", argv[2:]).params
    assert params["ready_path"]
    assert params["grace_s"] is None  # the kubelet's SIGKILL is the only deadline (see the grace period)
    worker = list(params["command"])
    assert worker[0] == "celery"
    assert "%h" in option(worker, "--hostname")  # each pod its own node name
    assert worker_command(worker, "celery-worker-7d4b9c-x2x9q").nodename == "worker@celery-worker-7d4b9c-x2x9q"
    celery_worker_params(worker)  # Celery accepts every option
    assert not any("://" in str(env.get("value", "")) for env in container()["env"]), "a URL (and password) inline"
    assert {env["name"] for env in container()["env"]} >= {"DRAINCTL_BROKER_URL"}
    assert all("secretKeyRef" in env["valueFrom"] for env in container()["env"] if env["name"].endswith("_URL"))


def test_the_readiness_probe_is_the_entrypoints_and_takes_the_fast_path() -> None:
    probe = container()["readinessProbe"]
    command = probe["exec"]["command"]
    assert command[:2] == ["drainctl", "entrypoint-ready"]
    # The drainctl command line has it, with these options...
    params = drainctl_cli.commands["entrypoint-ready"].make_context("entrypoint-ready", command[2:]).params
    entrypoint = container()["command"] + container()["args"]
    assert params["ready_path"] == option(entrypoint, "--ready-file")
    # ...and the launcher answers it without loading the command line.
    assert ready_file.probe_path(command[2:]) == params["ready_path"]
    assert probe["failureThreshold"] == 1 and probe["periodSeconds"] <= 10
    assert probe["timeoutSeconds"] >= 2
    # The ready file is on a volume of the pod: writable under readOnlyRootFilesystem, and gone with the pod.
    directory = str(Path(params["ready_path"]).parent)
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert directory in mounts and "emptyDir" in volumes[mounts[directory]]


def test_the_grace_period_covers_the_longest_task_and_what_is_prefetched() -> None:
    deployment = one("Deployment")
    longest = int(deployment["metadata"]["annotations"]["drainctl/longest-task-seconds"])
    worker = container()["args"]
    celery = celery_worker_params(worker)
    assert celery["time_limit"] == longest, "Celery's hard time limit is the longest a task may run"
    prefetched = celery["prefetch_multiplier"]  # tasks each pool process holds besides the one it runs
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= (1 + prefetched) * longest + DRAIN_OVERHEAD_S
    comment = (KIT / "worker-deployment.yaml").read_text()
    assert f"(1 + {prefetched}) x {longest} + {DRAIN_OVERHEAD_S} = {grace}" in comment


def test_the_disruption_budget_covers_the_workers_one_at_a_time() -> None:
    budget = one("PodDisruptionBudget")["spec"]
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget


def test_keda_scales_the_deployment_on_its_queue_with_credentials_from_a_secret() -> None:
    scaled = one("ScaledObject")["spec"]
    auth = one("TriggerAuthentication")
    assert scaled["scaleTargetRef"]["name"] == one("Deployment")["metadata"]["name"]
    assert scaled["minReplicaCount"] >= 1
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    metadata = trigger["metadata"]
    assert metadata["protocol"] == "http"  # counts the unacknowledged messages too
    assert metadata["queueName"] in celery_worker_params(container()["args"])["queues"]
    assert not {"host", "username", "password"} & metadata.keys()
    assert not any(re.search(r"://|password", value, re.I) for value in metadata.values())
    assert set(auth["spec"]) == {"secretTargetRef"}
    assert [ref["parameter"] for ref in auth["spec"]["secretTargetRef"]] == ["host"]
    # One pod's worth of messages: what it runs and holds prefetched.
    celery = celery_worker_params(container()["args"])
    assert int(metadata["value"]) == celery["concurrency"] * (1 + celery["prefetch_multiplier"])
    scale_down = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]


def test_no_secret_is_written_in_the_kit() -> None:
    kinds = {doc["kind"] for _, doc in manifests()}
    assert "Secret" not in kinds
    for path in KIT.glob("*.yaml"):
        for line in path.read_text().splitlines():
            if not line.lstrip().startswith("#"):
                assert not re.search(r"://[^/\s]*:[^@\s]*@", line), f"{path.name}: credentials in {line!r}"
