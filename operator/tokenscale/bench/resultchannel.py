"""How a benchmark pod hands its result to the operator without pod logs.

Each shard writes its full result (per-request records included, so merging stays exact) as
gzip in ConfigMaps owned by the InferenceBenchmark, split into parts below the 1 MiB object
limit. The pod's narrow ServiceAccount may only create/patch ConfigMaps in its namespace.
Results are keyed by run (the Job's name): a replica sweep runs one Job per level.
"""

from __future__ import annotations

import base64
import functools
import gzip
import time
from collections.abc import Callable
from typing import Any

from tokenscale import constants as c
from tokenscale.bench.models import BenchResult
from tokenscale.bench.retry import RETRYABLE_STATUSES, GaveUp, with_backoff
from tokenscale.k8s.kube import Kube, KubeError

PART_BYTES = 700_000  # base64 grows data by 4/3: stays well under the 1 MiB object limit
KEY = "result.json.gz"


def _name(run: str, shard: int, part: int) -> str:
    return f"{run}-r{shard}-{part}"


def publish(
    kube: Kube,
    namespace: str,
    bench: str,
    uid: str | None,
    shard: int,
    result_json: str,
    run: str | None = None,
    *,
    attempts: int = 8,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write one shard's result; returns the number of ConfigMaps written.

    Each part is retried with backoff (up to about 90 s in all) on connection errors, 409, 429
    and 5xx: the Job has no second chance, so an API-server blip must not lose the run. Apply
    is idempotent, so a retry after a lost response is harmless. After the bound, a
    :class:`KubeError` says which part could not be written and why.
    """
    run = run or bench
    blob = gzip.compress(result_json.encode(), compresslevel=6)
    parts = [blob[i : i + PART_BYTES] for i in range(0, len(blob), PART_BYTES)] or [b""]
    for index, chunk in enumerate(parts):
        meta: dict[str, Any] = {
            "name": _name(run, shard, index),
            "namespace": namespace,
            "labels": {
                c.LABEL_BENCHMARK: bench,
                c.LABEL_BENCHMARK_RUN: run,
                c.LABEL_ROLE: "benchmark-result",
                c.LABEL_MANAGED_BY: c.MANAGED_BY,
            },
            "annotations": {
                f"{c.LABEL_BENCHMARK}-shard": str(shard),
                f"{c.LABEL_BENCHMARK}-parts": str(len(parts)),
            },
        }
        if uid:
            meta["ownerReferences"] = [
                {
                    "apiVersion": "tokenscale.dev/v1alpha1",
                    "kind": "InferenceBenchmark",
                    "name": bench,
                    "uid": uid,
                }
            ]
        obj = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "binaryData": {KEY: base64.b64encode(chunk).decode()},
        }
        what = f"publishing ConfigMap {namespace}/{meta['name']} (part {index + 1}/{len(parts)})"
        try:
            with_backoff(
                functools.partial(kube.apply, obj),
                what=what,
                retryable=_transient,
                attempts=attempts,
                base_seconds=1.0,
                sleep=sleep,
            )
        except GaveUp as exc:
            status = exc.last.status if isinstance(exc.last, KubeError) else 0
            raise KubeError(status, str(exc)) from exc
    return len(parts)


def _transient(exc: Exception) -> bool:
    """Worth another try: no response at all (status 0), a conflict, throttling, a 5xx."""
    return isinstance(exc, KubeError) and (exc.status == 0 or exc.status in RETRYABLE_STATUSES)


def collect(
    kube: Kube, namespace: str, bench: str, shards: int, run: str | None = None
) -> list[BenchResult] | None:
    """All shards' results of one run, or None while any shard has not published completely."""
    selector = f"{c.LABEL_BENCHMARK}={bench},{c.LABEL_BENCHMARK_RUN}={run or bench}"
    found = kube.list("ConfigMap", namespace, selector)
    by_shard: dict[int, dict[int, bytes]] = {}
    expected: dict[int, int] = {}
    for cm in found:
        ann = cm["metadata"].get("annotations") or {}
        shard = int(ann.get(f"{c.LABEL_BENCHMARK}-shard", -1))
        expected[shard] = int(ann.get(f"{c.LABEL_BENCHMARK}-parts", 1))
        part = int(cm["metadata"]["name"].rsplit("-", 1)[1])
        data = (cm.get("binaryData") or {}).get(KEY, "")
        by_shard.setdefault(shard, {})[part] = base64.b64decode(data)
    results = []
    for shard in range(shards):
        parts = by_shard.get(shard, {})
        if shard not in expected or len(parts) != expected[shard]:
            return None
        blob = b"".join(parts[i] for i in range(expected[shard]))
        results.append(BenchResult.model_validate_json(gzip.decompress(blob)))
    return results
