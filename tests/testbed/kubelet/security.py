"""The kubelet's non-root check, ported so the test bed refuses what a real node refuses.

Why: ``runAsNonRoot: true`` without a ``runAsUser`` stops a root image (the ROCm vLLM images
have no ``USER``) with CreateContainerConfigError on a real node, but a process kubelet that
ignores security contexts would run it. This is ``verifyRunAsNonRoot`` from kubelet
``pkg/kubelet/kuberuntime/security_context_others.go`` over the effective security context
(container fields override the pod's, as ``securitycontext.DetermineEffectiveSecurityContext``
does), with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_INHERITED = ("runAsUser", "runAsGroup", "runAsNonRoot")


def effective_security_context(
    pod_spec: Mapping[str, Any], container: Mapping[str, Any]
) -> dict[str, Any]:
    """Pod-level fields the container inherits, overridden by the container's own."""
    pod_ctx = pod_spec.get("securityContext") or {}
    ctx = {k: pod_ctx[k] for k in _INHERITED if pod_ctx.get(k) is not None}
    ctx.update({k: v for k, v in (container.get("securityContext") or {}).items() if v is not None})
    return ctx


def verify_run_as_non_root(
    pod_spec: Mapping[str, Any], container: Mapping[str, Any], image_user: str, pod: str = ""
) -> str | None:
    """None when the container may start; otherwise the kubelet's error.

    ``image_user`` is the image's USER (``"0"``/``"root"``/empty for root, a UID, or a name).
    """
    ctx = effective_security_context(pod_spec, container)
    name = container.get("name", "")
    if not ctx.get("runAsNonRoot"):
        return None
    if ctx.get("runAsUser") is not None:
        if int(ctx["runAsUser"]) == 0:
            return f"container's runAsUser breaks non-root policy (pod: {pod!r}, container: {name})"
        return None
    user = image_user.split(":")[0]
    uid = 0 if user in ("", "root") else (int(user) if user.isdigit() else None)
    if uid == 0:
        return (
            "container has runAsNonRoot and image will run as root "
            f"(pod: {pod!r}, container: {name})"
        )
    if uid is None:
        return (
            f"container has runAsNonRoot and image has non-numeric user ({user}), cannot verify "
            f"user is non-root (pod: {pod!r}, container: {name})"
        )
    return None
