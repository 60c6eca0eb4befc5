"""Process kubelet: pod spec -> env/argv/ports, with Kubernetes semantics."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.testbed.kubelet.spec import (
    SpecError,
    build_env,
    expand,
    field_ref,
    parse_quantity,
    referenced_objects,
    resolve_argv,
    resolve_port,
    restart_wanted,
    service_env,
)

POD: dict[str, Any] = {
    "metadata": {
        "name": "web-0",
        "namespace": "ns1",
        "uid": "u-1",
        "labels": {"app": "web"},
        "annotations": {"a": "b"},
    },
    "spec": {"nodeName": "gpu-node-0", "serviceAccountName": "sa1", "containers": []},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--host $(POD_IP)", "--host 127.10.0.2"),
        ("$(POD_IP):$(PORT)", "127.10.0.2:8080"),
        ("$(UNDEFINED)", "$(UNDEFINED)"),
        ("$$(POD_IP)", "$(POD_IP)"),
        ("$$$(PORT)", "$8080"),
        ("cost $5", "cost $5"),
        ("trailing $", "trailing $"),
        ("$(unterminated", "$(unterminated"),
        ("$()", "$()"),
    ],
)
def test_expand_like_kubernetes(text: str, expected: str) -> None:
    env = {"POD_IP": "127.10.0.2", "PORT": "8080"}
    assert expand(text, env.get) == expected


def test_quantities() -> None:
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("2Gi") == 2 * 2**30
    assert parse_quantity("1e3") == 1000
    assert parse_quantity(4) == 4
    with pytest.raises(SpecError):
        parse_quantity("12Qx")


def test_field_refs() -> None:
    assert field_ref(POD, "metadata.name", "127.10.0.2", "127.0.0.1") == "web-0"
    assert field_ref(POD, "metadata.namespace", "", "") == "ns1"
    assert field_ref(POD, "status.podIP", "127.10.0.2", "127.0.0.1") == "127.10.0.2"
    assert field_ref(POD, "status.hostIP", "127.10.0.2", "127.0.0.1") == "127.0.0.1"
    assert field_ref(POD, "metadata.labels['app']", "", "") == "web"
    assert field_ref(POD, "spec.serviceAccountName", "", "") == "sa1"
    with pytest.raises(SpecError):
        field_ref(POD, "spec.nope", "", "")


def test_build_env_order_refs_and_expansion() -> None:
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(MY_IP):$(CM_PORT)/"},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {
                "name": "OPT",
                "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": True}},
            },
            {"name": "BASE", "value": "override"},
            {
                "name": "CPU",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}},
            },
        ],
        "resources": {"limits": {"cpu": "1500m"}},
    }
    data = {("configmap", "cm"): {"PORT": "8080"}, ("secret", "s"): {"pw": "hunter2"}}
    env = build_env(
        POD, container, pod_ip="127.10.0.9", host_ip="127.0.0.1", data=data, base={"BASE": "b"}
    )
    assert env["CM_PORT"] == "8080"
    assert env["URL"] == "http://127.10.0.9:8080/"
    assert env["PW"] == "hunter2"
    assert "OPT" not in env
    assert env["BASE"] == "override"
    assert env["CPU"] == "2"  # ceil, like the kubelet
    assert referenced_objects({"spec": {"containers": [container]}}) == {
        ("configmap", "cm"),
        ("secret", "s"),
        ("configmap", "gone"),
    }


def test_build_env_missing_required_ref_fails() -> None:
    container = {
        "name": "c",
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    }
    with pytest.raises(SpecError, match="not found"):
        build_env(POD, container, pod_ip="", host_ip="", data={})


def test_resolve_argv_command_args_and_image_defaults() -> None:
    env = {"POD_IP": "127.10.0.3"}
    c = {"name": "c", "command": ["python", "-m", "http.server"], "args": ["--bind", "$(POD_IP)"]}
    assert resolve_argv(c, env) == ["python", "-m", "http.server", "--bind", "127.10.0.3"]
    only_args = {"name": "c", "args": ["--port", "8000"]}
    assert resolve_argv(only_args, env, entrypoint=["serve"], default_args=["x"]) == [
        "serve",
        "--port",
        "8000",
    ]
    assert resolve_argv({"name": "c"}, env, entrypoint=["serve"], default_args=["x"]) == [
        "serve",
        "x",
    ]
    rewritten = resolve_argv(
        {"name": "c", "command": ["vllm", "serve"], "args": ["--model", "/m"]},
        env,
        rewrites=[(["vllm", "serve"], ["python", "-m", "mod"])],
    )
    assert rewritten == ["python", "-m", "mod", "--model", "/m"]
    positional = resolve_argv(  # what the operator renders: `vllm serve MODEL`
        {"name": "c", "command": ["vllm", "serve"], "args": ["/m", "--port", "8000"]},
        env,
        rewrites=[(["vllm", "serve"], ["python", "-m", "mod"])],
    )
    assert positional == ["python", "-m", "mod", "--model", "/m", "--port", "8000"]
    with pytest.raises(SpecError, match="no command"):
        resolve_argv({"name": "c"}, env)


def test_ports_and_restart_policy() -> None:
    containers = [{"ports": [{"name": "http", "containerPort": 8000}]}]
    assert resolve_port("http", containers) == 8000
    assert resolve_port("9000", containers) == 9000
    assert resolve_port(7, containers) == 7
    assert resolve_port("metrics", containers) is None
    assert restart_wanted("Always", 0) and restart_wanted("OnFailure", 1)
    assert not restart_wanted("OnFailure", 0) and not restart_wanted("Never", 1)


def test_service_link_env() -> None:
    env = service_env([("my-svc", "127.20.0.2", [{"name": "http", "port": 80, "protocol": "TCP"}])])
    assert env["MY_SVC_SERVICE_HOST"] == "127.20.0.2"
    assert env["MY_SVC_SERVICE_PORT"] == "80"
    assert env["MY_SVC_SERVICE_PORT_HTTP"] == "80"
    assert env["MY_SVC_PORT"] == "tcp://127.20.0.2:80"
    assert env["MY_SVC_PORT_80_TCP_ADDR"] == "127.20.0.2"
