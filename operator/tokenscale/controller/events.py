"""The Events a controller pass decides to post, as values (posting is the caller's job).

A pass returns its Events instead of posting them so the pure-ish decision stays testable and
the handler posts them after the status patch. ``Event`` is a NamedTuple: it still unpacks as
``(reason, message, type)``, and the type is checked to be one Kubernetes accepts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

from tokenscale.k8s.kube import Kube

EventType = Literal["Normal", "Warning"]


class Event(NamedTuple):
    """A core/v1 Event about the object a pass handled: CamelCase reason, message, type."""

    reason: str
    message: str
    type: EventType = "Normal"


def post(kube: Kube, involved: dict[str, Any], events: Iterable[Event]) -> None:
    """Post each Event on ``involved`` (best effort: the facade logs failures)."""
    for event in events:
        kube.event(involved, event.reason, event.message, event.type)
