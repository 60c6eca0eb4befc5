"""Where a scale-to-zero service's Service points: the pure rule and the controller that moves it.

Why: a Service that points at the activator while engines are ready puts a proxy in the data
path for nothing; one that points at absent engines refuses requests that could have woken the
service. Both mistakes are silent in a cluster, so the rule and every transition are pinned here.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from tests.factories import service
from tests.unit.fakekube import FakeKube
from tokenscale.api.config import ActivatorSettings, OperatorConfig
from tokenscale.api.service import InferenceServiceSpec
from tokenscale.controller import routing
from tokenscale.controller.reconcile import (
    child_version,
    reconcile_service,
    refresh_status,
)
from tokenscale.plan import plan_service
from tokenscale.render import render_all
from tokenscale.render.service import route_of, wants_activator
from tokenscale.validation import parse_spec

ON = OperatorConfig(activator=ActivatorSettings(enabled=True))
OFF = OperatorConfig()
POOL = {"name": "mi300x", "gpu": "MI300X", "minReplicas": 0, "maxReplicas": 2}
ZERO_OK = {"mode": "builtin", "targetPerReplica": 2500, "scaleToZero": True}


def _spec(scale_to_zero: bool) -> InferenceServiceSpec:
    doc = service(pools=[POOL], scaling={**ZERO_OK, "scaleToZero": scale_to_zero})
    return InferenceServiceSpec.model_validate(doc["spec"])


@pytest.mark.parametrize(
    ("cfg", "scale_to_zero", "ready", "activator_ready", "expected"),
    [
        (ON, True, 0, True, True),  # the one case: nothing serves, an activator can
        (ON, True, 1, True, False),  # an engine is ready: no proxy in the path
        (ON, True, 0, False, False),  # no activator to take the request
        (ON, False, 0, True, False),  # the service never sleeps
        (OFF, True, 0, True, False),  # the operator has it off
    ],
)
def test_the_rule(
    cfg: OperatorConfig, scale_to_zero: bool, ready: int, activator_ready: bool, expected: bool
) -> None:
    assert wants_activator(cfg, _spec(scale_to_zero), ready, activator_ready) is expected


class VersionedKube(FakeKube):
    """Like the API server for a Service: no ``generation``, a new ``resourceVersion`` per write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = itertools.count(1)

    def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        stored = super().apply(obj, force=force)
        if stored["kind"] != "Service":
            return stored
        meta = stored["metadata"]
        kept = self.objects[("Service", meta.get("namespace"), meta["name"])]["metadata"]
        kept.pop("generation", None)
        kept["resourceVersion"] = str(next(self.writes))
        return copy.deepcopy(self.objects[("Service", meta.get("namespace"), meta["name"])])


def _service_at_zero(kube: FakeKube) -> dict[str, Any]:
    doc = service(pools=[POOL], scaling=ZERO_OK, replicas=0)
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    return kube.put(doc)


def _activator_pod(kube: FakeKube, ready: bool = True) -> None:
    kube.put(
        {
            "kind": "Pod",
            "metadata": {
                "name": "tokenscale-activator-1",
                "namespace": "ns",
                "labels": dict(ON.activator.selector),
            },
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.9",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }
    )


def _live_service(kube: FakeKube) -> dict[str, Any]:
    found = kube.get("Service", "ns", "llm")
    assert found is not None
    return found


def _reasons(events: list[tuple[str, str, str]]) -> list[str]:
    return [reason for reason, _, _ in events if reason.startswith("RoutedTo")]


def test_at_zero_the_service_selects_the_activator_and_back_once_an_engine_is_ready() -> None:
    kube = VersionedKube()
    _activator_pod(kube)
    body = _service_at_zero(kube)
    first = reconcile_service(body, kube, ON)
    live = _live_service(kube)
    assert route_of(live) == "activator"
    assert live["spec"]["selector"] == dict(sorted(ON.activator.selector.items()))
    assert live["spec"]["ports"][0]["targetPort"] == "http"  # the activator names its port so
    assert _reasons(first.events) == ["RoutedToActivator"]
    # What the resync's ledger records is the Service as it is now, not the one applied before
    # the move (else the next resync pass would reconcile again for nothing).
    assert first.children is not None
    assert first.children[("Service", "llm")] == child_version(live)

    # The next reconcile keeps the route and says nothing.
    body["status"] = first.status
    again = reconcile_service(body, kube, ON)
    assert route_of(_live_service(kube)) == "activator"
    assert _reasons(again.events) == []

    # Woken: /scale says 1, the Deployment reports a ready engine; a status refresh moves back.
    body["spec"]["replicas"] = 1
    reconcile_service(body, kube, ON)
    deployment = kube.objects[("Deployment", "ns", "llm-mi300x")]
    deployment["status"] = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}
    back = refresh_status(body, kube, ON)
    live = _live_service(kube)
    assert route_of(live) == "engines"
    assert live["spec"]["selector"] == {
        "tokenscale.dev/endpoint": "true",
        "tokenscale.dev/service": "llm",
    }
    assert _reasons(back.events) == ["RoutedToEngines"]


def test_without_a_ready_activator_the_service_keeps_its_engine_selector() -> None:
    kube = FakeKube()
    _activator_pod(kube, ready=False)
    body = _service_at_zero(kube)
    out = reconcile_service(body, kube, ON)
    assert route_of(_live_service(kube)) == "engines"
    assert _reasons(out.events) == []


def test_disabled_activator_never_reroutes() -> None:
    kube = FakeKube()
    _activator_pod(kube)
    body = _service_at_zero(kube)
    out = reconcile_service(body, kube, OFF)
    assert route_of(_live_service(kube)) == "engines"
    assert _reasons(out.events) == []


def test_two_racing_reconciles_move_the_service_once() -> None:
    """The create handler and a status refresh both read "engines" before either writes: the
    second finds the move done when it reads again, and posts no second Event."""
    kube = FakeKube()
    _activator_pod(kube)
    body = _service_at_zero(kube)
    reconcile_service(body, kube, OFF)  # children exist, Service on the engines
    svc = parse_spec(body)
    plans = plan_service(svc, ON)

    def render(want: Any) -> dict[str, Any]:
        objects = render_all(svc, ON, plans, {"mi300x": 0}, want).objects
        return next(o for o in objects if o["kind"] == "Service")

    first: list[tuple[str, str, str]] = []
    second: list[tuple[str, str, str]] = []
    assert routing.follow(body, svc, ON, kube, 0, "engines", render, first) is not None
    assert routing.follow(body, svc, ON, kube, 0, "engines", render, second) is None
    assert _reasons(first) == ["RoutedToActivator"] and second == []
