"""How status goes on the wire: one timestamp format and merge patches built from the models.

Kubernetes writes ``metav1.Time`` as RFC 3339 in UTC to the second (``2026-12-03T04:05:06Z``);
every time the operator writes (conditions, status, Events) uses :func:`k8s_time`, and model
fields typed :data:`Timestamp` serialise the same way.

Status is written with JSON merge patches (RFC 7386), where a key that is absent keeps what the
object has and ``null`` deletes it. :func:`merge_patch` turns a status model into such a patch:
the fields the caller set (an explicit ``None`` deletes), and nothing the model merely defaults,
so a controller that owns ``status.metrics`` never overwrites ``status.benchmarkHistory`` with an
empty default. Lists are replaced whole by a merge patch, so their items are complete objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, PlainSerializer

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def k8s_time(t: datetime) -> str:
    """``metav1.Time`` text: UTC, whole seconds (a naive time is taken as UTC)."""
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return t.strftime(TIME_FORMAT)


#: A datetime that serialises (JSON mode) as :func:`k8s_time`; validation is pydantic's.
Timestamp = Annotated[datetime, PlainSerializer(k8s_time, return_type=str, when_used="json")]


def merge_patch(model: BaseModel) -> dict[str, Any]:
    """The JSON merge patch a (status) model stands for, with camelCase keys."""
    dumped = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    fields = type(model).model_fields
    out: dict[str, Any] = {}
    for name in model.model_fields_set:
        key = fields[name].alias or name
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out[key] = merge_patch(value)
        elif isinstance(value, list):
            out[key] = [
                _whole(v) if isinstance(v, BaseModel) else d
                for v, d in zip(value, dumped[key], strict=True)
            ]
        else:
            out[key] = dumped[key]
    return out


def _whole(item: BaseModel) -> dict[str, Any]:
    """A list item as Kubernetes stores it: every field, camelCase, no nulls."""
    return item.model_dump(mode="json", by_alias=True, exclude_none=True)


def would_change(
    current: Mapping[str, Any] | None, patch: Mapping[str, Any], ignore: frozenset[str]
) -> bool:
    """Whether the merge patch ``patch`` would change ``current``, keys named in ``ignore``
    (at any depth, e.g. ``observedAt``) aside.

    Why: a loop that republishes the same figures with a new timestamp every few seconds makes
    a write, a watch event for every watcher and a resourceVersion each time; a caller can skip
    such a write and only refresh the timestamps now and then."""
    have = current or {}
    for key, value in patch.items():
        if key in ignore:
            continue
        old = have.get(key)
        if value is None:
            if old is not None:
                return True
        elif isinstance(value, Mapping):
            if would_change(old if isinstance(old, Mapping) else None, value, ignore):
                return True
        elif old != value:
            return True
    return False
