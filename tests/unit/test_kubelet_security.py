"""The process kubelet's port of the kubelet's ``verifyRunAsNonRoot``, applied to what the
operator renders: a non-root engine of a root image (the ROCm vLLM images have no USER) must
pass the check a real node makes, which ``runAsNonRoot`` alone does not."""

from __future__ import annotations

from typing import Any

import pytest

from tests.testbed.kubelet.security import verify_run_as_non_root
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import InferenceService
from tokenscale.plan import plan_service
from tokenscale.render import render_all

ROOT_IMAGE = "0"  # rocm/vllm and vllm-openai-rocm: built without USER


def _pod(cfg: OperatorConfig, gpu: str = "MI300X") -> dict[str, Any]:
    svc = InferenceService.model_validate(
        {
            "apiVersion": "tokenscale.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "svc"},
            "spec": {
                "model": {"name": "m", "source": {"huggingFace": "meta-llama/Llama-3.1-8B"}},
                "pools": [{"name": "a", "gpu": gpu}],
            },
        }
    )
    objs = render_all(svc, cfg, plan_service(svc, cfg)).objects
    dep = next(o for o in objs if o["kind"] == "Deployment")
    spec: dict[str, Any] = dep["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("gpu", ["MI300X", "MI355X", "MI210"])
def test_rendered_non_root_engine_passes_the_kubelets_check(gpu: str) -> None:
    spec = _pod(OperatorConfig.model_validate({"pods": {"runAsNonRoot": True}}), gpu)
    assert verify_run_as_non_root(spec, spec["containers"][0], ROOT_IMAGE) is None
    assert spec["securityContext"]["runAsUser"] != 0


def test_run_as_non_root_alone_is_refused_like_a_real_node() -> None:
    """What tokenscale rendered before: the container never starts."""
    spec = _pod(OperatorConfig.model_validate({"pods": {"runAsNonRoot": True}}))
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        del spec["securityContext"][key]
    refused = verify_run_as_non_root(spec, spec["containers"][0], ROOT_IMAGE, "ns/p")
    assert refused == (
        "container has runAsNonRoot and image will run as root (pod: 'ns/p', container: engine)"
    )


def test_kubelet_rules() -> None:
    ctr = {"name": "c"}
    assert verify_run_as_non_root({}, ctr, "0") is None  # not asked: root is fine
    uid0 = {"securityContext": {"runAsNonRoot": True, "runAsUser": 0}}
    assert "breaks non-root policy" in str(verify_run_as_non_root(uid0, ctr, "1000"))
    named = {"securityContext": {"runAsNonRoot": True}}
    assert "non-numeric user" in str(verify_run_as_non_root(named, ctr, "vllm"))
    assert verify_run_as_non_root(named, ctr, "1000:1000") is None
    # the container's own context overrides the pod's
    override = {"name": "c", "securityContext": {"runAsUser": 1000}}
    assert verify_run_as_non_root(uid0, override, "0") is None


def test_root_default_needs_no_user() -> None:
    spec = _pod(OperatorConfig())
    assert "securityContext" not in spec
    assert verify_run_as_non_root(spec, spec["containers"][0], ROOT_IMAGE) is None
