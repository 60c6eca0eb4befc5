"""The activator: receives requests for services scaled to zero, wakes them and proxies.

While an InferenceService has no ready engine, its ClusterIP Service selects the activator's
pods instead of engine pods (Knative-style), so the first request after scale-to-zero is held
here instead of being refused by an empty Service. Modules, one concern each:

* :mod:`.hostname` - which service a request is for, from its Host header (pure).
* :mod:`.backend`  - the cluster as the activator needs it (a protocol; the real one on Kube).
* :mod:`.gate`     - one shared wake and wait per service, however many requests arrive.
* :mod:`.proxy`    - forwarding one request to an engine pod, streamed.
* :mod:`.metrics`  - the activator's Prometheus series on a private registry.
* :mod:`.server`   - the aiohttp application tying them together.
* :mod:`.cli`      - ``tokenscale activator``.
"""
