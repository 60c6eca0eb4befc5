"""Prometheus Operator ServiceMonitor for the engines' /metrics (optional, spec.serviceMonitor)."""

from __future__ import annotations

from typing import Any

from tokenscale import constants as c
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.render import names

Obj = dict[str, Any]


def service_monitor(
    svc: InferenceService,
    name: str,
    labels: dict[str, str],
    service_labels: dict[str, str],
    config: OperatorConfig,
) -> Obj:
    """Scrape every endpoint of the Service at the operator's own scrape interval.

    ``podTargetLabels`` copies the pods' service and pool labels onto every engine series (as
    ``tokenscale_dev_service`` / ``tokenscale_dev_pool``), so dashboards filter engines by
    InferenceService and pool; ``model_name`` alone merges two services serving one model.
    """
    interval = f"{max(1, round(config.scrape_interval_seconds))}s"
    return {
        "apiVersion": c.SERVICEMONITOR_API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": names.object_meta(svc, name, labels),
        "spec": {
            "selector": {"matchLabels": dict(sorted(service_labels.items()))},
            "podTargetLabels": [c.LABEL_SERVICE, c.LABEL_POOL],
            "endpoints": [{"port": c.ENGINE_PORT_NAME, "path": "/metrics", "interval": interval}],
        },
    }
