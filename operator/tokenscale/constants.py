"""Every label, annotation and well-known name the operator writes, in one place.

Selectors, renderers, the autoscaler and tests all import these, so a key is never spelled
twice and renaming one is a one-line change.
"""

from typing import Final

from tokenscale import GROUP

FIELD_MANAGER: Final = "tokenscale"

# Labels on every child object and engine pod.
LABEL_SERVICE: Final = f"{GROUP}/service"
LABEL_POOL: Final = f"{GROUP}/pool"
LABEL_BENCHMARK: Final = f"{GROUP}/benchmark"
# One Job of a benchmark (a replica sweep runs several); keys its result ConfigMaps.
LABEL_BENCHMARK_RUN: Final = f"{GROUP}/benchmark-run"
LABEL_ROLE: Final = f"{GROUP}/role"  # engine | leader | worker | benchmark
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
#: "true" on pods that serve HTTP (single-node engines and multi-node leaders, not headless
#: workers); the Service selects on it because a selector cannot say role in (engine, leader).
LABEL_ENDPOINT: Final = f"{GROUP}/endpoint"
MANAGED_BY: Final = "tokenscale"
APP_NAME: Final = "vllm"
COMPONENT_ENGINE: Final = "engine"
ROLE_ENGINE: Final = "engine"
ROLE_LEADER: Final = "leader"
ROLE_WORKER: Final = "worker"

# Annotations.
ANNOTATION_SPEC_HASH: Final = f"{GROUP}/spec-hash"
ANNOTATION_GPU: Final = f"{GROUP}/gpu"
ANNOTATION_POD_DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
ANNOTATION_SCALER_STATE: Final = f"{GROUP}/scaler-state"
# Set by a replica-sweep benchmark while it owns /scale; the autoscaler then only publishes.
ANNOTATION_SCALING_HOLD: Final = f"{GROUP}/scaling-hold"
# On the rendered Service: "engines" or "activator" (where it routes while scaled to zero).
ANNOTATION_ROUTE: Final = f"{GROUP}/route"
#: The operator's last rollout decision for a pool Deployment (JSON of status.pools[].rollout)
ANNOTATION_ROLLOUT: Final = f"{GROUP}/rollout"

# AMD device plugin resources and node-labeller labels (docs/autoscaling.md, "Capacity and drain").
RESOURCE_GPU: Final = "amd.com/gpu"
RESOURCE_PREFIX: Final = "amd.com/"
NODE_LABEL_PREFIX: Final = "amd.com/gpu."
NODE_LABEL_PREFIX_LEGACY: Final = "beta.amd.com/gpu."
NODE_LABEL_DEVICE_ID: Final = "amd.com/gpu.device-id"
NODE_LABEL_PRODUCT_NAME: Final = "amd.com/gpu.product-name"
NODE_LABEL_DEVICE_ID_LEGACY: Final = "beta.amd.com/gpu.device-id"
NODE_LABEL_PARTITION: Final = "amd.com/gpu.compute-memory-partition"
NODE_LABEL_PARTITION_DOCS: Final = "amd.com/compute-memory-partition"
NODE_LABEL_NFD_AMD_GPU: Final = "feature.node.kubernetes.io/amd-gpu"

# LeaderWorkerSet (multi-node replicas) and Prometheus Operator.
LWS_API_VERSION: Final = "leaderworkerset.x-k8s.io/v1"
LWS_LABEL_WORKER_INDEX: Final = "leaderworkerset.sigs.k8s.io/worker-index"
SERVICEMONITOR_API_VERSION: Final = "monitoring.coreos.com/v1"

# Environment variables the ROCm runtime reads to hide GPUs; the device plugin already limits
# the container to its GPUs, and vLLM raises on inconsistent values, so engines never get them.
VISIBLE_DEVICES_ENV: Final = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")

# Engine container.
ENGINE_CONTAINER: Final = "engine"
ENGINE_PORT: Final = 8000
ENGINE_PORT_NAME: Final = "http"

# Condition types.
COND_READY: Final = "Ready"
COND_PROGRESSING: Final = "Progressing"
COND_DEGRADED: Final = "Degraded"
COND_SCALING: Final = "Scaling"
COND_SLA_MET: Final = "SLAMet"

# AMD DRA driver (gpu.amd.com) device ``type`` attribute values (ROCm/k8s-gpu-dra-driver consts).
DRA_TYPE_GPU: Final = "amdgpu"
DRA_TYPE_PARTITION: Final = "amdgpu-partition"
