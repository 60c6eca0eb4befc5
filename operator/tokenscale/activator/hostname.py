"""Which InferenceService a request is for, from its HTTP Host header.

Why the Host header: the activator stands behind every scaled-to-zero Service at once, and the
Host a client used (``NAME.NAMESPACE`` or the full service DNS name) is the only part of a
plain HTTP request that names the Service it was sent to.
"""

from __future__ import annotations

import re

#: What the error message offers; clients in the cluster use one of these with port 8000.
ACCEPTED_FORMS = (
    "NAME.NAMESPACE, NAME.NAMESPACE.svc or NAME.NAMESPACE.svc.CLUSTER-DOMAIN "
    "(e.g. http://NAME.NAMESPACE:8000 or http://NAME.NAMESPACE.svc.cluster.local:8000)"
)

# A DNS-1123 label: what Kubernetes allows for service and namespace names.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def target_from_host(host: str) -> tuple[str, str]:
    """``(namespace, name)`` of the service addressed by ``host`` (optionally with ``:port``).

    Raises ValueError naming the accepted forms: a bare ``NAME`` is refused because only the
    client's own namespace resolves it, and the activator serves every namespace.
    """
    hostname = _strip_port(host.strip()).lower().removesuffix(".")
    labels = hostname.split(".")
    if len(labels) == 2 or (len(labels) >= 3 and labels[2] == "svc"):
        name, namespace = labels[0], labels[1]
        domain = labels[3:]
        if all(_LABEL.fullmatch(x) for x in (name, namespace, *domain)):
            return namespace, name
    raise ValueError(
        f"cannot tell which InferenceService Host {host!r} is for; the activator accepts "
        f"{ACCEPTED_FORMS}"
    )


def _strip_port(host: str) -> str:
    base, sep, port = host.rpartition(":")
    if not sep:
        return host
    if not port.isdigit():
        raise ValueError(f"Host {host!r} has a bad port; the activator accepts {ACCEPTED_FORMS}")
    return base
