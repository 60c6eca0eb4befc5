"""Owner references for the objects the operator creates on behalf of a custom resource."""

from __future__ import annotations

from typing import Any

from tokenscale import API_VERSION


def owner_reference(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """A controller reference to ``body``: garbage collection deletes the child with it."""
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": body.get("kind", kind),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
