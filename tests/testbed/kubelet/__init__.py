"""The test bed's "process kubelet": runs selected pods as real local processes on loopback.

Why: KWOK only pretends that pods run. Engines, benchmark pods and the operator itself must really
execute for the e2e tests to mean anything, but these machines have no container runtime and may
only talk to 127.0.0.0/8. So pods labelled ``testbed.tokenscale.dev/run=process`` (KWOK is told to
ignore them) are run here instead: each gets a loopback pod IP, a private mount namespace with its
own ``/etc/hosts`` (Service names -> loopback Service proxies), its ServiceAccount token at the
in-cluster path, and its volumes; readiness comes from its probes and status goes back to the API.

Entry point: ``python -m tests.testbed.kubelet --kubeconfig PATH --work-dir DIR``.
"""

from __future__ import annotations

RUN_LABEL = "testbed.tokenscale.dev/run"
RUN_LABEL_VALUE = "process"
#: Label selector for the pods this kubelet runs.
POD_SELECTOR = f"{RUN_LABEL}={RUN_LABEL_VALUE}"
