"""Status is recomputed from observed objects every pass; these tests pin how pod and
workload states turn into Ready/Progressing/Degraded, and how /scale totals split by pool."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokenscale import constants as c
from tokenscale.api.service import GPUPool
from tokenscale.controller import observe
from tokenscale.controller.split import split_replicas

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _pod(pool: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"p-{pool}", "labels": {c.LABEL_POOL: pool}}, "status": status}


def _types(conds: list[Any]) -> dict[str, tuple[str, str]]:
    return {x.type: (x.status, x.reason) for x in conds}


def test_unschedulable_pod_makes_service_degraded_with_scheduler_message() -> None:
    msg = "0/9 nodes are available: 6 Insufficient amd.com/gpu."
    pods = [
        _pod(
            "big",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": msg,
                }
            ],
        )
    ]
    pool = observe.PoolObservation("big", "MI300X", desired=1)
    pool.problems = observe.pod_problems(pods)["big"]
    conds = _types(observe.service_conditions([pool], [], [], 3))
    assert conds[c.COND_DEGRADED] == ("True", "Unschedulable")
    assert conds[c.COND_READY] == ("False", "ReplicasNotReady")
    full = observe.service_conditions([pool], [], [], 3)
    assert any(msg in x.message for x in full)


def test_crash_loop_is_reported() -> None:
    pods = [
        _pod(
            "a",
            containerStatuses=[
                {"state": {"waiting": {"reason": "CrashLoopBackOff", "message": "x"}}}
            ],
        )
    ]
    assert observe.pod_problems(pods) == {"a": ["CrashLoopBackOff: x"]}


def _looping(state: dict[str, Any], *, ready: bool = False, code: int = 2) -> dict[str, Any]:
    return {
        "name": "engine",
        "ready": ready,
        "restartCount": 4,
        "state": state,
        "lastState": {"terminated": {"exitCode": code, "reason": "Error"}},
    }


def test_a_crash_loop_reads_the_same_whether_it_waits_or_runs_between_restarts() -> None:
    """Regression (issue 17, engine-fault drill): a refresh that caught a crash-looping engine
    in its moment of running read Healthy, and each back-off step changed the message, so the
    service's status flipped (3 writes and 1.6 Events a minute)."""
    waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting"}}
    running = {"running": {"startedAt": "2026-12-03T07:00:00Z"}}
    seen = [
        observe.pod_problems([_pod("a", containerStatuses=[_looping(state)])])
        for state in (waiting, running, {"waiting": {"reason": "CrashLoopBackOff",
                                                     "message": "back-off 40s restarting"}})
    ]  # fmt: skip
    expected = {"a": ["CrashLoopBackOff: container engine keeps exiting (exit code 2)"]}
    assert seen == [expected] * 3
    oom = _looping(running, code=137)
    oom["lastState"]["terminated"]["reason"] = "OOMKilled"
    assert observe.pod_problems([_pod("a", containerStatuses=[oom])]) == {
        "a": ["CrashLoopBackOff: container engine keeps exiting (exit code 137, OOMKilled)"]
    }
    # ready again after a crash long ago, or a clean exit: no problem
    assert (
        observe.pod_problems([_pod("a", containerStatuses=[_looping(running, ready=True)])]) == {}
    )
    assert observe.pod_problems([_pod("a", containerStatuses=[_looping(running, code=0)])]) == {}


@pytest.mark.parametrize(
    "reason",
    ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"],
)
def test_a_container_that_cannot_start_is_degraded_with_its_reason(reason: str) -> None:
    """A pod waiting on a missing Secret key (CreateContainerConfigError) never starts either;
    only CreateContainerError was listed before, so such a pod left Degraded at Healthy."""
    waiting = {"reason": reason, "message": 'secret "hf" not found'}
    pods = [_pod("a", containerStatuses=[{"state": {"waiting": waiting}}])]
    pool = observe.PoolObservation("a", "MI300X", desired=1)
    pool.problems = observe.pod_problems(pods)["a"]
    conds = _types(observe.service_conditions([pool], [], [], 3))
    assert conds[c.COND_DEGRADED] == ("True", "PodErrors")
    assert pool.problems == [f'{reason}: secret "hf" not found']


@pytest.mark.parametrize(
    ("ready", "desired", "expected_ready", "progressing"),
    [
        (1, 2, "True", "True"),
        (2, 2, "True", "False"),
        (0, 1, "False", "True"),
        (0, 0, "True", "False"),
    ],
)
def test_ready_when_every_serving_pool_has_a_ready_replica(
    ready: int, desired: int, expected_ready: str, progressing: str
) -> None:
    pool = observe.PoolObservation(
        "a", "MI355X", desired, replicas=desired, ready=ready, updated=desired
    )
    conds = _types(observe.service_conditions([pool], [], [], 1))
    assert conds[c.COND_READY][0] == expected_ready
    assert conds[c.COND_PROGRESSING][0] == progressing


def test_plan_failure_blocks_ready() -> None:
    pool = observe.PoolObservation("a", "MI300X", 1)
    conds = _types(observe.service_conditions([pool], ["pool a: needs 2 TiB"], [], 1))
    assert conds[c.COND_READY] == ("False", "PlanFailed")
    assert conds[c.COND_DEGRADED] == ("True", "PlanFailed")


def _stored(conditions: list[observe.Condition]) -> list[dict[str, Any]]:
    """Conditions as the API server stores them (what the next pass reads back)."""
    return [x.to_k8s() for x in conditions]


def test_transition_time_kept_until_status_flips() -> None:
    first = _stored(observe.merge_conditions([], observe.service_conditions([], [], [], 1), NOW))
    later = NOW + timedelta(minutes=5)
    same = _stored(
        observe.merge_conditions(first, observe.service_conditions([], [], [], 2), later)
    )
    assert [x["lastTransitionTime"] for x in same] == [x["lastTransitionTime"] for x in first]
    pool = observe.PoolObservation("a", "MI300X", 1)
    flipped = _stored(
        observe.merge_conditions(first, observe.service_conditions([pool], [], [], 3), later)
    )
    ready = next(x for x in flipped if x["type"] == c.COND_READY)
    assert ready["status"] == "False"
    assert ready["lastTransitionTime"] == "2026-11-28T12:05:00Z"


POOLS = [
    GPUPool(name="mi300x", gpu="MI300X", min_replicas=1, max_replicas=4),
    GPUPool(name="mi355x", gpu="MI355X", min_replicas=1, max_replicas=3),
]


@pytest.mark.parametrize(
    ("total", "hint", "expected"),
    [
        (None, None, {"mi300x": 1, "mi355x": 1}),
        (4, None, {"mi300x": 1, "mi355x": 3}),  # cheaper per token (MI355X) filled first
        (5, None, {"mi300x": 2, "mi355x": 3}),
        (7, None, {"mi300x": 4, "mi355x": 3}),
        (20, None, {"mi300x": 4, "mi355x": 3}),  # clamped to the maxima
        (1, None, {"mi300x": 1, "mi355x": 1}),  # never below the minima
        (5, {"mi300x": 3, "mi355x": 2}, {"mi300x": 3, "mi355x": 2}),  # autoscaler's own split
        (6, {"mi300x": 3, "mi355x": 2}, {"mi300x": 3, "mi355x": 3}),  # external change: resplit
    ],
)
def test_split_replicas(
    total: int | None, hint: dict[str, int] | None, expected: dict[str, int]
) -> None:
    cost = {"mi300x": 2.0, "mi355x": 1.0}
    assert split_replicas(total, POOLS, cost, hint) == expected
