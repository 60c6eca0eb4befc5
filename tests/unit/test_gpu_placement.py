"""Resource naming and GPU node selection against the node shapes real AMD clusters publish.

Why against the test bed's shapes: they are the labels and allocatable resources the device
plugin and node labeller write (tests/testbed/nodes.py, ../shared/facts/amd-gpus.md), so the
pure decision (which resource, which nodes) is checked on the same input the e2e scheduler sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.factories import service
from tests.testbed import nodes as tb
from tests.unit.fakekube import FakeKube
from tokenscale.api.config import OperatorConfig
from tokenscale.api.service import GPUPool
from tokenscale.controller import nodefacts
from tokenscale.controller.reconcile import reconcile_service
from tokenscale.render import cli as render_cli
from tokenscale.render import gpuplacement as gp

CFG = OperatorConfig()
SHAPES = {s.name: tb.shape_manifest(s) for s in tb.node_shapes()}
CLUSTER = gp.cluster_gpus(SHAPES.values())


def pool(gpu: str, partition: str | None = None) -> GPUPool:
    return GPUPool.model_validate({"name": "p", "gpu": gpu, "partition": partition})


def eligible(request: gp.GpuRequest) -> set[str]:
    """Nodes the scheduler could bind to: terms match, the resource exists, no blocking taint."""
    return {
        name
        for name, node in SHAPES.items()
        if gp.matches_terms(node["metadata"]["labels"], request.node_terms)
        and request.resource in node["status"]["allocatable"]
        and not node["spec"].get("taints")
    }


@pytest.mark.parametrize(
    ("gpu", "partition", "resource", "nodes"),
    [
        # mixed-named unpartitioned MI300X: spx_nps1; never a CPX node of either naming
        ("MI300X", None, "amd.com/spx_nps1", {"shape-mixed-spx"}),
        ("MI300X", "cpx_nps4", "amd.com/cpx_nps4", {"shape-mixed-cpx"}),
        # single naming on CPX: amd.com/gpu, selected by the partition's vram (24G)
        ("MI300X", "cpx_nps1", "amd.com/gpu", {"shape-single-cpx"}),
        ("MI210", None, "amd.com/gpu", {"shape-hetero"}),  # counter-form labels only
        ("MI325X", None, "amd.com/gpu", {"shape-legacy"}),  # beta.amd.com/* only
        ("MI355X", None, "amd.com/gpu", {"shape-mi355-oam"}),  # tainted twins excluded
    ],
)
def test_auto_naming_per_shape(
    gpu: str, partition: str | None, resource: str, nodes: set[str]
) -> None:
    request = gp.gpu_request(pool(gpu, partition), CFG.gpus[gpu], CFG, CLUSTER)
    assert request.resource == resource
    assert eligible(request) == nodes


def test_whole_gpu_never_lands_on_a_partition_node_in_any_naming() -> None:
    """Single naming: the vram guard keeps it off (same device id, same amd.com/gpu); mixed:
    the resource name does (a partition node has no amd.com/spx_*), as on heterogeneous mixed
    nodes where a vram guard would wrongly exclude the node's whole GPUs."""
    partitions = {"shape-mixed-cpx", "shape-single-cpx"}
    for naming in ("single", "mixed", "auto"):
        cfg = OperatorConfig.model_validate({"pods": {"resourceNaming": naming}})
        for gpu in ("MI300X", "MI325X", "MI355X"):
            request = gp.gpu_request(pool(gpu), cfg.gpus[gpu], cfg, CLUSTER)
            assert not eligible(request) & partitions, (naming, gpu)
            if request.naming == "single":
                assert not any(
                    gp.matches_terms(SHAPES[n]["metadata"]["labels"], request.node_terms)
                    for n in partitions
                )


def test_auto_only_counts_nodes_the_node_selector_admits() -> None:
    """Single-named whole MI300X nodes outside pods.nodeSelector do not outvote the mixed
    node engines may use."""
    plain = tb.node_manifest(tb.NodePool("mi300x", 2, tb.MI300X), 0)
    plain2 = tb.node_manifest(tb.NodePool("mi300x", 2, tb.MI300X), 1)
    everything = [*SHAPES.values(), plain, plain2]
    gpu = CFG.gpus["MI300X"]
    assert gp.naming_for(pool("MI300X"), gpu, CFG, gp.cluster_gpus(everything)) == "single"
    scoped = gp.cluster_gpus(everything, node_selector={tb.POOL_LABEL: "shapes"})
    assert gp.naming_for(pool("MI300X"), gpu, CFG, scoped) == "mixed"


def test_whole_gpu_follows_the_spx_name_the_nodes_advertise() -> None:
    """An MI355X node in NPS2 reports its unpartitioned GPUs as amd.com/spx_nps2."""
    node = tb.shape_manifest(
        tb.NodeShape("nps2", tb.gpu_labels(tb.MI355X_GOP, 8), {"amd.com/spx_nps2": "8"})
    )
    cluster = gp.cluster_gpus([node])
    request = gp.gpu_request(pool("MI355X"), CFG.gpus["MI355X"], CFG, cluster)
    assert request.resource == "amd.com/spx_nps2"
    mixed = OperatorConfig.model_validate({"pods": {"resourceNaming": "mixed"}})
    offline = gp.gpu_request(pool("MI355X"), mixed.gpus["MI355X"], mixed, None)
    assert offline.resource == "amd.com/spx_nps1"  # the configured wholeGpuProfile


def test_offline_auto_is_the_device_plugins_default() -> None:
    assert gp.naming_for(pool("MI300X"), CFG.gpus["MI300X"], CFG, None) == "single"


def test_tolerated_taints_count_again() -> None:
    manifests = [SHAPES["shape-unhealthy"], SHAPES["shape-dcm"]]
    blocked = gp.cluster_gpus(manifests)
    assert all(n.blocked for n in blocked.nodes)
    tolerant = OperatorConfig.model_validate(
        {"pods": {"tolerations": [{"operator": "Exists"}]}}
    ).pods.tolerations
    assert not any(n.blocked for n in gp.cluster_gpus(manifests, tolerant).nodes)


def test_labeller_missing_names_the_reason_and_the_fix() -> None:
    problem = gp.labeller_problem(pool("MI300A"), CFG.gpus["MI300A"], CLUSTER)
    assert problem is not None
    assert "shape-no-labeller" in problem and "enableNodeLabeller" in problem
    assert "labeller.enabled=true" in problem
    # a labelled GPU, or a cluster without bare GPU nodes: nothing to say
    assert gp.labeller_problem(pool("MI300X"), CFG.gpus["MI300X"], CLUSTER) is None
    labelled_only = gp.cluster_gpus(m for n, m in SHAPES.items() if n != "shape-no-labeller")
    assert gp.labeller_problem(pool("MI300A"), CFG.gpus["MI300A"], labelled_only) is None


def _reconcile(kube: FakeKube, pools: list[dict[str, Any]]) -> dict[str, Any]:
    doc = service(
        model={"name": "l8", "source": {"huggingFace": "meta-llama/Llama-3.1-8B"}}, pools=pools
    )
    doc["metadata"] = {"name": "llm", "namespace": "ns"}
    body = kube.put(doc)
    return reconcile_service(body, kube, CFG).status


def test_reconcile_reads_nodes_once_per_resync_and_reports_a_missing_labeller() -> None:
    kube = FakeKube()
    for manifest in SHAPES.values():
        kube.put(manifest)
    status = _reconcile(kube, [{"name": "a", "gpu": "MI300A"}, {"name": "b", "gpu": "MI300X"}])
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "node labeller" in ready["message"]
    dep = kube.objects[("Deployment", "ns", "llm-b")]
    limits = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"amd.com/spx_nps1": "1"}  # auto: only mixed-named whole MI300X nodes
    # a node added between resync passes is not seen until the next pass invalidates
    kube.delete("Node", None, "shape-mixed-spx")
    _reconcile(kube, [{"name": "b", "gpu": "MI300X"}])
    assert "amd.com/spx_nps1" in str(kube.objects[("Deployment", "ns", "llm-b")])
    nodefacts.for_client(kube).invalidate()  # type: ignore[arg-type]
    _reconcile(kube, [{"name": "b", "gpu": "MI300X"}])
    dep = kube.objects[("Deployment", "ns", "llm-b")]
    limits = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"amd.com/gpu": "1"}  # no mixed nodes left: single, the default


def test_render_cli_reads_a_node_list(tmp_path: Path) -> None:
    """`tokenscale render --nodes` shows what auto naming picks on that cluster."""
    nodes_file = tmp_path / "nodes.yaml"
    nodes_file.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List",
                                          "items": [SHAPES["shape-mixed-spx"]]}))  # fmt: skip
    example = Path(__file__).parents[2] / "examples" / "gpt-oss-120b-mi300x.yaml"
    out = CliRunner().invoke(render_cli.render_command, [str(example), "--nodes", str(nodes_file)])
    assert out.exit_code == 0, out.output
    assert "amd.com/spx_nps1: '8'" in out.stdout and "amd.com/gpu: '8'" not in out.stdout
    offline = CliRunner().invoke(render_cli.render_command, [str(example)])
    assert "amd.com/gpu: '8'" in offline.stdout
    empty = tmp_path / "empty.yaml"
    empty.write_text("kind: List\nitems: []\n")
    bad = CliRunner().invoke(render_cli.render_command, [str(example), "--nodes", str(empty)])
    assert bad.exit_code != 0 and "no Node objects" in bad.output
