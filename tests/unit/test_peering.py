"""Kopf peering set-up: its CRDs as the chart ships them, and priorities that never tie."""

from __future__ import annotations

from tokenscale.k8s import peering


def test_peering_crds_are_kopfs_kinds_with_an_open_status() -> None:
    crds = {c["spec"]["names"]["kind"]: c for c in peering.peering_crds()}
    assert crds["ClusterKopfPeering"]["spec"]["scope"] == "Cluster"
    assert crds["KopfPeering"]["spec"]["scope"] == "Namespaced"
    for crd in crds.values():
        assert crd["spec"]["group"] == "kopf.dev"
        assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.kopf.dev"
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        # Kopf writes one key per replica identity into status: it must not be pruned.
        assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_random_priorities_are_positive_and_distinct() -> None:
    drawn = {peering.random_priority() for _ in range(1000)}
    assert len(drawn) == 1000
    assert all(1 <= p < 2**31 for p in drawn)


def test_outranked_by_follows_kopfs_pause_rule() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

    def rec(priority: int, age: float, lifetime: int = 60) -> dict[str, object]:
        seen = (now - timedelta(seconds=age)).isoformat()
        return {"priority": priority, "lifetime": lifetime, "lastseen": seen}

    records = {
        "me": rec(100, 0),
        "higher-live": rec(200, 10),
        "lower-live": rec(50, 10),
        "higher-dead": rec(300, 90),
        "equal-live": rec(100, 5),
    }
    assert sorted(peering.outranked_by(records, "me", 100, now)) == ["equal-live", "higher-live"]
    assert peering.outranked_by(records, "me", 1000, now) == []
    alone = {"me": rec(1, 0), "crashed": rec(9, 61)}
    assert peering.outranked_by(alone, "me", 1, now) == []  # its record expired: we act
