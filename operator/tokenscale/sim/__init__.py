"""Engine simulator: a vLLM look-alike whose latencies come from a batching model of an AMD GPU.

Why it exists: real Instinct GPUs are not available where tokenscale is developed and tested, and
fleet-scale behaviour (tens of engines) never will be. The simulator speaks vLLM's HTTP API and
exposes vLLM's exact Prometheus metric families, so the operator, the autoscaler and the benchmark
job cannot tell it from a real engine, while its performance model is calibrated to public MLPerf
figures (see ``docs/simulator.md``).

Modules, one concern each:

* :mod:`.profiles`  - per (GPU, model) performance parameters, loaded from ``profiles.yaml``.
* :mod:`.model`     - the pure, virtual-time continuous-batching engine model.
* :mod:`.metrics`   - vLLM-identical metric families (cheap weighted accumulators + exposition).
* :mod:`.replay`    - drive engines in virtual time without HTTP (tests, calibration search).
* :mod:`.workload`  - seeded request-length samplers (OpenOrca-like) shared by tests and benchmarks.
* :mod:`.server`    - the OpenAI-compatible aiohttp server hosting many engines in one process.
* :mod:`.cli`       - ``tokenscale sim engine``.
"""
