"""Autoscaling on tokens/s from vLLM's own counters (issue 7).

Pure parts (no I/O, table-tested): :mod:`.rates` (parse + counter deltas), :mod:`.decision`
(``decide``), :mod:`.capacity` (allocatable GPUs, pod-deletion costs), :mod:`.targets` (where the
per-replica target comes from). I/O part: :mod:`.collector` (scrape pods or query Prometheus).
The kopf loop in ``tokenscale.controller`` calls them; see ``docs/autoscaling.md``.
"""
