"""Which service a request is for, from its Host header.

Why: the Host is the activator's only routing key; a wrong parse would wake (and send a
prompt to) the wrong service, and a bare NAME must be refused rather than guessed, because
the activator serves every namespace.
"""

from __future__ import annotations

import pytest

from tokenscale.activator.hostname import target_from_host


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("llama.prod", ("prod", "llama")),
        ("llama.prod:8000", ("prod", "llama")),
        ("llama.prod.svc", ("prod", "llama")),
        ("llama.prod.svc:8000", ("prod", "llama")),
        ("llama.prod.svc.cluster.local", ("prod", "llama")),
        ("llama.prod.svc.cluster.local:8000", ("prod", "llama")),
        ("llama.prod.svc.cluster.local.", ("prod", "llama")),  # absolute DNS name
        ("llama.prod.svc.corp.example.com:80", ("prod", "llama")),  # another cluster domain
        ("LLaMA-2.Prod", ("prod", "llama-2")),  # DNS is case-insensitive
        (" llama2-70b.team-a:8000 ", ("team-a", "llama2-70b")),
    ],
)
def test_accepted_forms(host: str, expected: tuple[str, str]) -> None:
    assert target_from_host(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        "",
        "llama",  # bare name: the namespace is unknown
        "llama:8000",
        "llama.prod.cluster.local",  # four labels without svc
        "llama.prod.pod",
        "llama.prod.svc..local",
        "10.0.0.7:8000",  # a pod or cluster IP names no service
        "[::1]:8000",
        "llama.prod:http",
        "llama_2.prod",  # not a DNS-1123 label
        "-llama.prod",
        f"{'a' * 64}.prod",
        "llama..svc",
    ],
)
def test_refused_forms_name_what_is_accepted(host: str) -> None:
    with pytest.raises(ValueError, match=r"NAME\.NAMESPACE") as info:
        target_from_host(host)
    assert "NAME.NAMESPACE.svc.CLUSTER-DOMAIN" in str(info.value)
    assert "http://NAME.NAMESPACE:8000" in str(info.value)
