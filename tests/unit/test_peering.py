"""Kopf peering set-up: its CRDs as the chart ships them, and priorities that never tie."""

from __future__ import annotations

from tokenscale.controller import peering


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
