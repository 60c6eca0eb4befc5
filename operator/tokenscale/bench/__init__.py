"""``tokenscale bench``: an MLPerf-style load generator for OpenAI-compatible LLM servers.

Modules, one concern each: ``sse`` (stream parsing), ``httpclient`` (keep-alive HTTP/1.1 on raw
asyncio), ``datasets`` (prompts, length distributions), ``arrivals`` (Poisson/offline schedules),
``runner`` (one run + self-check), ``scenarios`` (repeats, sweeps, shard merge), ``metrics``
(vLLM/MLPerf arithmetic), ``verdict`` (SLA outcome), ``models`` (the result contract),
``report``/``svg`` (HTML), ``cli`` (``bench_command``), ``fakeserver`` (tests and benchmarks).
"""
