"""Security properties checked over everything the operator renders and every Role it ships.

* Rendered pods (every golden case, with the ROCm extras on and off): never privileged, never
  allowed to escalate, and the only capability ever added is SYS_PTRACE, and only when
  ``pods.sysPtrace`` asks for it on a GPU engine.
* The activator's Role is exactly what the activator's code sends: its Kube calls are recorded
  by driving :class:`KubeBackend` through every method the server and gate use.
* No Role the chart or the operator creates grants anything on Secrets: the operator, the
  activator and benchmark pods cannot read a credential, so they cannot echo one into status,
  Events, logs or reports (the e2e ``tests/e2e/test_security.py`` plants one and scans).
"""

from __future__ import annotations

import ast
import asyncio
import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenscale.activator.backend import KubeBackend
from tokenscale.api.config import OperatorConfig
from tokenscale.render import benchmark_job
from tokenscale.render import cli as render_cli

ROOT = Path(__file__).parents[2]
ACTIVATOR_TEMPLATE = ROOT / "charts/tokenscale/templates/activator.yaml"
ACTIVATOR_CODE = ROOT / "operator/tokenscale/activator"
TEMPLATES = ROOT / "charts/tokenscale/templates"
GOLDEN_INPUTS = ROOT / "tests/golden/inputs"


def _config(path: Path, lws: bool) -> OperatorConfig:
    """The config the golden test renders ``path`` with (beside it, or with the inputs)."""
    extra = path.with_name(f"{path.stem}.config.yaml")
    if not extra.exists():
        extra = GOLDEN_INPUTS / f"{path.stem}.config.yaml"
    config = OperatorConfig.load(extra if extra.exists() else None)
    return config.model_copy(update={"leader_worker_set": lws})


def _cases() -> list[tuple[str, Path, bool]]:
    """Every golden input (examples and tests/golden/inputs), with and without LWS."""
    paths = sorted(ROOT.glob("examples/*.yaml")) + sorted(
        p for p in GOLDEN_INPUTS.glob("*.yaml") if not p.name.endswith(".config.yaml")
    )
    services = [p for p in paths if "kind: InferenceService" in p.read_text()]
    assert len(services) >= 10
    return [(f"{p.stem}{'.lws' if lws else ''}", p, lws) for p in services for lws in (False, True)]


CASES = _cases()


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec in a rendered object (Deployment, LeaderWorkerSet leader and worker)."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj)
    return found


def _render(path: Path, lws: bool, config: OperatorConfig) -> list[dict[str, Any]]:
    svc = render_cli.load_services(path)[0]
    return render_cli.render_service(svc, config, {})[0].objects


@pytest.mark.parametrize("extras", [True, False], ids=["rocm-extras", "baseline"])
@pytest.mark.parametrize(("name", "path", "lws"), CASES, ids=[c[0] for c in CASES])
def test_rendered_pods_are_never_privileged(name: str, path: Path, lws: bool, extras: bool) -> None:
    config = _config(path, lws)
    pods = config.pods.model_copy(update={"sys_ptrace": extras, "seccomp_unconfined": extras})
    config = config.model_copy(update={"pods": pods})
    checked = 0
    objects = _render(path, lws, config)
    for obj in objects:
        for pod in _pod_specs(obj):
            assert not pod.get("hostPID") and not pod.get("hostNetwork"), (name, obj["kind"])
            for container in pod["containers"] + pod.get("initContainers", []):
                ctx = container.get("securityContext") or {}
                where = f"{name} {obj['kind']}/{obj['metadata']['name']} {container['name']}"
                assert ctx.get("privileged") is not True, where
                assert ctx.get("allowPrivilegeEscalation") is False, where
                added = set((ctx.get("capabilities") or {}).get("add", []))
                assert added <= ({"SYS_PTRACE"} if extras else set()), (where, added)
                checked += 1
    workloads = [o for o in objects if o["kind"] in ("Deployment", "LeaderWorkerSet")]
    assert bool(checked) == bool(workloads), f"{name}: containers not found, the walk is broken"


class RecordingKube:
    """Records (apiGroup, resource, verb) per call, answering like a service at zero."""

    def __init__(self) -> None:
        self.calls: set[tuple[str, str, str]] = set()

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        assert kind == "InferenceService", kind
        self.calls.add(("tokenscale.dev", "inferenceservices", "get"))
        return {
            "apiVersion": "tokenscale.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace, "uid": "u"},
            "spec": {},
        }

    def list(self, kind: str, namespace: str | None, selector: str = "") -> list[Any]:
        assert kind == "Pod", kind
        self.calls.add(("", "pods", "list"))
        return []

    def patch_merge(
        self, kind: str, namespace: str | None, name: str, patch: dict[str, Any], sub: str = ""
    ) -> dict[str, Any]:
        assert kind == "InferenceService", kind
        self.calls.add(
            ("tokenscale.dev", "inferenceservices" + (f"/{sub}" if sub else ""), "patch")
        )
        return {}

    def event(self, involved: dict[str, Any], reason: str, message: str, type_: str = "") -> None:
        self.calls.add(("", "events", "create"))


def _activator_role() -> set[tuple[str, str, str]]:
    chunks = ACTIVATOR_TEMPLATE.read_text().split("\n---")
    roles = [c for c in chunks if re.search(r"^kind: Role$", c, flags=re.MULTILINE)]
    assert len(roles) == 1
    rules = yaml.safe_load(roles[0][roles[0].index("rules:") :])["rules"]
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_activator_role_is_exactly_what_its_code_sends() -> None:
    kube = RecordingKube()
    backend = KubeBackend(kube)  # type: ignore[arg-type]

    async def drive() -> None:
        body = await backend.get_service("ns", "svc")
        assert body is not None
        minimal = copy.deepcopy(body)
        example = yaml.safe_load((ROOT / "examples/llama31-8b-scale-to-zero.yaml").read_text())
        minimal["spec"] = example["spec"]
        await backend.wake(minimal)
        await backend.ready_ips("ns", "svc")

    asyncio.run(drive())
    assert kube.calls == _activator_role(), (
        f"granted but unused: {_activator_role() - kube.calls}; used but not granted: "
        f"{kube.calls - _activator_role()}"
    )


def test_only_the_backend_talks_to_the_api_server() -> None:
    """The recording above covers the activator only if no other module calls Kube."""
    for path in sorted(ACTIVATOR_CODE.glob("*.py")):
        if path.name in ("backend.py", "cli.py"):  # cli.py only builds the Kube it hands over
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "kube":
                pytest.fail(f"{path.name}:{node.lineno} uses a Kube outside KubeBackend")
            if isinstance(node, ast.ImportFrom) and node.module == "tokenscale.k8s.kube":
                pytest.fail(f"{path.name}:{node.lineno} imports Kube")


def _lists(text: str, key: str) -> list[list[str]]:
    """Every flow list under ``key:`` in a template (the chart writes rules that way)."""
    return [
        [item.strip().strip("\"'") for item in found.split(",") if item.strip()]
        for found in re.findall(rf"\b{key}:\s*\[([^\]]*)\]", text)
    ]


def test_no_role_grants_secrets() -> None:
    resources: list[list[str]] = []
    verbs: list[list[str]] = []
    for path in sorted(TEMPLATES.glob("*.yaml")):
        text = path.read_text()
        resources += _lists(text, "resources")
        verbs += _lists(text, "verbs")
    assert len(resources) > 20 and len(verbs) == len(resources), "the rule scan is broken"
    for obj in benchmark_job.rbac("ns", OperatorConfig()):
        for rule in obj.get("rules", []):
            resources.append(rule["resources"])
            verbs.append(rule["verbs"])
    for found in resources:
        assert "secrets" not in found and "*" not in found, found
    for found in verbs:
        assert "*" not in found, found
