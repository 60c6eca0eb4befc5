"""Two operator replicas with Kopf peering, as the chart runs them with replicaCount: 2:
each picks its own random priority, exactly one acts, and when it crashes the standby takes
over once the crashed replica's keep-alive record expires (Kopf's 60 s lifetime)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.e2e.helpers import apply, example, get, wait_condition, wait_for
from tests.e2e.operator_proc import OperatorProcess, peered_replicas
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e

PEERING = "tokenscale-ha"


def _service(name: str) -> dict:  # type: ignore[type-arg]
    doc = example("llama2-70b-mi355x.yaml")
    doc["metadata"]["name"] = name
    doc["spec"]["scaling"] = {"mode": "off"}
    return doc


@pytest.fixture
def replicas(cluster: Cluster, operator: OperatorProcess) -> Iterator[list[OperatorProcess]]:
    with peered_replicas(cluster, operator, PEERING, "operator") as replicas:
        yield replicas


def _peers(cluster: Cluster) -> dict[str, dict]:  # type: ignore[type-arg]
    obj = get(cluster, "clusterkopfpeerings.kopf.dev", PEERING) or {}
    return dict(obj.get("status") or {})


def _state(proc: OperatorProcess) -> str:
    """The replica's last peering transition in its log: active, paused or starting."""
    state = "starting"
    text = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
    for line in text.splitlines():
        if "Resuming operations" in line:
            state = "active"
        elif "Pausing operations" in line:
            state = "paused"
    return state


def _handled(proc: OperatorProcess, name: str) -> bool:
    """Did this replica run a handler for the object (Kopf's JSON logs name the object)?"""
    text = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        obj = record.get("object") or {}
        if obj.get("name") == name and "succeeded" in str(record.get("message")):
            return True
    return False


def test_two_replicas_one_acts_and_the_standby_takes_over_after_a_crash(
    cluster: Cluster, replicas: list[OperatorProcess], namespace: str
) -> None:
    peers = wait_for(
        lambda: (p := _peers(cluster)) and {"operator-a", "operator-b"} <= set(p) and p,
        timeout=60,
        what="both replicas registered in the ClusterKopfPeering",
    )
    prio = {name: int(peers[name]["priority"]) for name in ("operator-a", "operator-b")}
    assert prio["operator-a"] != prio["operator-b"], "equal priorities would freeze both"
    by_name = {p.name: p for p in replicas}
    active = by_name[max(prio, key=lambda k: prio[k])]
    standby = by_name[min(prio, key=lambda k: prio[k])]
    # Kopf starts peered replicas paused: the lower-priority one either never resumes (it saw
    # the other first: no log line at all) or, if it started alone, pauses once it sees the
    # higher-priority one. Wait until that has settled.
    wait_for(
        lambda: _state(active) == "active" and _state(standby) != "active",
        timeout=90,
        what="the highest-priority replica acting and the other paused",
    )

    apply(cluster, namespace, _service("ha-one"))
    wait_condition(cluster, namespace, "ha-one", "Ready", lambda c: c["status"] == "True", 120)
    assert _handled(active, "ha-one"), active.tail()
    assert not _handled(standby, "ha-one"), "the paused replica acted too:\n" + standby.tail()

    active.kill()
    crashed = time.monotonic()
    apply(cluster, namespace, _service("ha-two"))
    wait_condition(cluster, namespace, "ha-two", "Ready", lambda c: c["status"] == "True", 180)
    took_over = time.monotonic() - crashed
    assert _handled(standby, "ha-two"), standby.tail()
    assert _state(standby) == "active"
    print(f"standby took over {took_over:.0f} s after the crash")
