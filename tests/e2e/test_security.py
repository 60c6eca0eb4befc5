"""Security and bad input on a real API server, with the operator under the chart's RBAC.

* A known secret planted three ways (a Hugging Face token through ``spec.model.hfTokenSecret``,
  S3 credentials through ``source.s3.credentialsSecret``, a ``podTemplate`` env
  ``secretKeyRef``) in a vLLM service and a simulated one: after both reconcile and a
  benchmark runs against the simulated one, the value (and its base64) appears nowhere in the
  operator's log, the services' and benchmark's status, the namespace's Events or the
  benchmark's report ConfigMap. The rendered pods do reference the Secrets (the planting
  reached the operator), by name only.
* A sample of generated specs (:mod:`tests.fuzzspecs`) applied with kubectl: whatever the API
  server accepts, the operator reconciles into a status (Ready, or a condition saying why)
  without a single handler exception in its log and without restarting.
* The chart installed for a watch list: its ServiceAccount reaches nothing outside it but the
  documented fleet-wide pod list, and no Secret anywhere (the API server's authorizer says).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import NonInteractiveExampleWarning

from tests.e2e.helpers import apply, condition, example, get, wait_for
from tests.e2e.operator_proc import CHART, OperatorProcess
from tests.fuzzspecs import mutated
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e

#: Kopf's line for a handler that raised something other than its retry/permanent errors.
HANDLER_EXCEPTION = re.compile(r"failed with an exception|Traceback \(most recent call last\)")
FUZZ_SAMPLE = int(os.environ.get("TOKENSCALE_FUZZ_E2E", "24"))


def _record(name: str, figures: dict[str, int]) -> None:
    """Figures for benchmarks/reliability.py, when it runs this module."""
    out = os.environ.get("TOKENSCALE_RELIABILITY_DIR")
    if out:
        (Path(out) / f"{name}.json").write_text(json.dumps(figures, sort_keys=True))


def _log_since(operator: OperatorProcess, offset: int) -> str:
    return operator.log_path.read_bytes()[offset:].decode(errors="replace")


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def _sim(name: str) -> dict[str, Any]:
    doc = example("simulated-llama2-70b.yaml")
    doc["metadata"]["name"] = name
    doc["spec"]["pools"] = [{"name": "mi355x", "gpu": "MI355X", "minReplicas": 1, "maxReplicas": 1}]
    doc["spec"]["scaling"] = {"mode": "builtin", "targetPerReplica": 100000}
    return doc


def test_planted_secrets_never_leave_their_secret(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    planted = f"PLANTED-{uuid.uuid4().hex}"
    forms = [planted, base64.b64encode(planted.encode()).decode()]
    offset = operator.log_path.stat().st_size if operator.log_path.exists() else 0
    apply(cluster, namespace, _secret("hf-token", {"token": planted}))
    apply(
        cluster,
        namespace,
        _secret("s3-creds", {"AWS_ACCESS_KEY_ID": planted, "AWS_SECRET_ACCESS_KEY": planted}),
    )
    apply(cluster, namespace, _secret("proxy", {"url": f"http://u:{planted}@proxy:3128"}))

    proxy_env = {
        "env": [
            {"name": "HTTPS_PROXY", "valueFrom": {"secretKeyRef": {"name": "proxy", "key": "url"}}}
        ]
    }
    svc = _sim("sec")  # simulated: the benchmark's target (it renders the podTemplate env only)
    svc["spec"]["podTemplate"] = proxy_env
    apply(cluster, namespace, svc)
    real = _sim("sec-s3")  # a vLLM engine (KWOK-run): it renders the HF token and S3 credentials
    del real["spec"]["engine"]
    real["spec"]["model"]["source"] = {
        "s3": {"uri": "s3://models/llama-2-70b", "credentialsSecret": "s3-creds"}
    }
    real["spec"]["model"]["hfTokenSecret"] = {"name": "hf-token", "key": "token"}
    real["spec"]["podTemplate"] = proxy_env
    apply(cluster, namespace, real)

    for name in ("sec", "sec-s3"):
        wait_for(
            lambda n=name: (  # type: ignore[misc]
                condition(get(cluster, "tsvc", n, "-n", namespace), "Ready").get("status") == "True"
            ),
            timeout=150,
            what=f"{name} Ready",
        )
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "tokenscale.dev/v1alpha1",
            "kind": "InferenceBenchmark",
            "metadata": {"name": "sec-bench"},
            "spec": {
                "target": {"service": "sec"},
                "scenario": "server",
                "load": {"qps": 2, "durationSeconds": 10},
                "dataset": {
                    "input": {"kind": "fixed", "mean": 16},
                    "output": {"kind": "fixed", "mean": 16},
                },
            },
        },
    )
    done = wait_for(
        lambda: (
            (b := get(cluster, "tsbench", "sec-bench", "-n", namespace))
            and (b.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            and b
        ),
        timeout=240,
        what="benchmark finished",
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]

    # The planting reached the operator: the pods reference each Secret, by name.
    deployments = json.dumps(get(cluster, "deployments", "-n", namespace))
    for secret in ("hf-token", "s3-creds", "proxy"):
        assert f'"{secret}"' in deployments, secret

    report = done["status"]["report"].split("/")[1]
    scanned = {
        "operator log": _log_since(operator, offset),
        "services": json.dumps(get(cluster, "tsvc", "-n", namespace)),
        "benchmark": json.dumps(done),
        "events": json.dumps(get(cluster, "events", "-n", namespace)),
        "report ConfigMap": json.dumps(get(cluster, "configmap", report, "-n", namespace)),
        "rendered objects": deployments + json.dumps(get(cluster, "configmaps", "-n", namespace)),
    }
    assert len(scanned["report ConfigMap"]) > 1000, "the report is missing: the scan means nothing"
    assert scanned["operator log"].count("\n") > 10, "no operator log: the scan means nothing"
    leaks = [where for where, text in scanned.items() for form in forms if form in text]
    _record("secret_scan", {"places_scanned": len(scanned), "leaks": len(leaks)})
    assert not leaks, f"the planted secret leaked into {leaks}"
    # Positive control: the same scan finds the value where it does belong.
    assert (
        planted
        in base64.b64decode(
            get(cluster, "secret", "hf-token", "-n", namespace)["data"]["token"]
        ).decode()
    )


def _generated(n: int) -> list[dict[str, Any]]:
    """``n`` generated specs, the same in every run (derandomised hypothesis)."""
    found: list[dict[str, Any]] = []

    @settings(
        max_examples=n * 4,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated("InferenceService") | mutated("InferenceBenchmark"))
    def collect(doc: dict[str, Any]) -> None:
        if len(found) < n and _small(doc):
            found.append(doc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        collect()
    return found


def _small(doc: dict[str, Any]) -> bool:
    """Specs that would start at most a few (KWOK) pods: the machine is shared."""
    pools = doc["spec"].get("pools") if isinstance(doc["spec"], dict) else None
    if not isinstance(pools, list):
        return True
    total = 0
    for pool in pools:
        low = pool.get("minReplicas", 1) if isinstance(pool, dict) else 0
        total += low if isinstance(low, int) and not isinstance(low, bool) else 0
    replicas = doc["spec"].get("replicas")
    return total <= 4 and not (isinstance(replicas, int) and replicas > 4)


def test_generated_specs_on_the_api_server(
    cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    docs = _generated(FUZZ_SAMPLE)
    assert len(docs) == FUZZ_SAMPLE
    offset = operator.log_path.stat().st_size if operator.log_path.exists() else 0
    pid = operator.proc.pid if operator.proc else None
    accepted: list[tuple[str, str]] = []
    for i, doc in enumerate(docs):
        doc = {**doc, "metadata": {"name": f"fz-{i}"}}
        path = tmp_path / f"fz-{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        out = cluster.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
        if out.returncode == 0:
            accepted.append(("tsvc" if doc["kind"] == "InferenceService" else "tsbench", f"fz-{i}"))
        else:  # the API server's own refusal names the field
            assert "spec" in out.stderr or "metadata" in out.stderr, out.stderr
    assert accepted, "the API server accepted none: the sample tests nothing of the operator"

    def handled() -> list[str]:
        waiting = []
        for kind, name in accepted:
            status = (get(cluster, kind, name, "-n", namespace) or {}).get("status") or {}
            if not (status.get("conditions") or status.get("phase")):
                waiting.append(name)
        return waiting

    wait_for(lambda: not handled(), timeout=120, what=f"a status on all of {accepted}")
    log = _log_since(operator, offset)
    exceptions = HANDLER_EXCEPTION.findall(log)
    _record(
        "security_e2e",
        {"applied": len(docs), "accepted": len(accepted), "handler_exceptions": len(exceptions)},
    )
    assert not exceptions, "\n".join(
        line for line in log.splitlines() if HANDLER_EXCEPTION.search(line)
    )
    assert operator.alive() and operator.proc is not None and operator.proc.pid == pid
    print(f"fuzz e2e: {len(docs)} applied, {len(accepted)} accepted, 0 handler exceptions")


VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


def _can(cluster: Cluster, user: str, verb: str, resource: str, namespace: str) -> bool:
    """``resource`` as ``plural.group[/subresource]``: the authorizer's answer for ``user``."""
    name, _, sub = resource.partition("/")
    args = [f"--subresource={sub}"] if sub else []
    out = cluster.kubectl(
        "auth", "can-i", verb, name, *args, "-n", namespace, f"--as={user}", check=False
    )
    if out.stdout.strip() not in ("yes", "no"):
        raise AssertionError(f"kubectl auth can-i {verb} {resource}: {out.stdout} {out.stderr}")
    return out.stdout.strip() == "yes"


def _rules_in(cluster: Cluster, user: str, namespace: str) -> dict[str, set[str]]:
    """``kubectl auth can-i --list`` (a SelfSubjectRulesReview): resource -> verbs."""
    out = cluster.kubectl("auth", "can-i", "--list", "-n", namespace, f"--as={user}")
    rules: dict[str, set[str]] = {}
    for line in out.stdout.splitlines()[1:]:
        parts = line.split()
        if not parts or parts[0].startswith("["):  # a non-resource URL row
            continue
        verbs = line[line.rindex("[") + 1 : line.rindex("]")].split()
        rules.setdefault(parts[0], set()).update(verbs)
    return rules


def _qualified(group: str, resource: str) -> str:
    name, _, sub = resource.partition("/")
    name = f"{name}.{group}" if group else name
    return f"{name}/{sub}" if sub else name


def test_namespace_scoped_install_reaches_nothing_outside(
    cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    """The chart with ``watchNamespaces``: its ServiceAccount may do what the operator does in
    the watched namespace and, outside it, only the documented fleet-wide pod list (capacity
    of shared nodes); asked of the API server's own authorizer (SubjectAccessReview through
    ``kubectl auth can-i --as``). ``operator`` only installs the CRDs the names resolve to."""
    release, release_ns = "tsscope", f"{namespace}-sys"
    user = f"system:serviceaccount:{release_ns}:{release}-tokenscale"
    rendered = subprocess.run(
        [str(cluster.bin_dir / "helm"), "template", release, str(CHART), "-n", release_ns,
         "--set-json", f"watchNamespaces={json.dumps([namespace])}",
         "--show-only", "templates/rbac.yaml"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = tmp_path / "rbac.yaml"
    path.write_text(rendered)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == namespace
    namespaced = {
        _qualified(group, res)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
    } | {"secrets", "configmaps", "pods", "serviceaccounts", "roles.rbac.authorization.k8s.io"}
    cluster.kubectl("apply", "-f", str(path))
    try:
        # Positive control: inside the watched namespace the grants are live.
        assert _can(cluster, user, "patch", "deployments.apps", namespace)
        assert _can(cluster, user, "list", "inferenceservices.tokenscale.dev", namespace)
        outside = {
            (res, verb, ns)
            for ns in ("default", "kube-system", f"{namespace}-other")
            for res, verbs in _rules_in(cluster, user, ns).items()
            if res in namespaced
            for verb in verbs
        }
        allowed = {("pods", "list", ns) for ns in ("default", "kube-system", f"{namespace}-other")}
        assert outside == allowed, f"granted outside the watch list: {sorted(outside - allowed)}"
        # The same through single SubjectAccessReviews, for what matters most.
        for ns in ("default", f"{namespace}-other"):
            for verb in ("get", "create", "patch", "delete"):
                assert not _can(cluster, user, verb, "deployments.apps", ns), (verb, ns)
                assert not _can(cluster, user, verb, "configmaps", ns), (verb, ns)
        for verb in VERBS:  # no Secret anywhere, inside either
            assert not _can(cluster, user, verb, "secrets", namespace), verb
    finally:
        cluster.kubectl("delete", "-f", str(path), "--ignore-not-found", check=False)
