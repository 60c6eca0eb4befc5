"""The shared-prefix dataset: N tenants' system prompts reused, multi-turn history resent."""

from __future__ import annotations

import itertools
import json

import pytest

from tokenscale.bench import datasets
from tokenscale.bench.datasets import LengthDist

Q = LengthDist(kind="fixed", value=20)
OUT = LengthDist(kind="fixed", value=8)


def test_requests_reuse_a_few_system_prompts() -> None:
    prompts = datasets.shared_prefix(
        400, systems=4, system_tokens=300, input_len=Q, output_len=OUT, seed=3
    )
    assert len(prompts) == 400
    systems = {p.messages[0]["content"] for p in prompts if p.messages}
    assert len(systems) == 4
    assert all(len(s.split()) == 300 for s in systems)
    questions = {p.messages[1]["content"] for p in prompts if p.messages}
    assert len(questions) > 390  # the questions differ
    assert all(p.input_tokens == 320 for p in prompts)


def test_turns_resend_history_and_come_in_order() -> None:
    prompts = datasets.shared_prefix(
        12, systems=2, system_tokens=50, input_len=Q, output_len=OUT, seed=1, turns=3
    )
    conversations = 4
    for c in range(conversations):
        turns = [prompts[t * conversations + c].messages or [] for t in range(3)]
        assert [len(m) for m in turns] == [2, 4, 6]  # system, (user, assistant)*, user
        for earlier, later in itertools.pairwise(turns):
            assert later[: len(earlier)] == earlier  # each turn's prompt extends the last
        assert turns[1][2]["role"] == "assistant" and len(turns[1][2]["content"].split()) == 8


def test_seeded_and_encodable_for_both_apis() -> None:
    a = datasets.shared_prefix(5, systems=2, system_tokens=10, input_len=Q, output_len=OUT, seed=9)
    b = datasets.shared_prefix(5, systems=2, system_tokens=10, input_len=Q, output_len=OUT, seed=9)
    assert a == b
    chat = json.loads(datasets.encode(a[0], api="chat", model="m", ignore_eos=True))
    assert chat["messages"][0]["role"] == "system"
    text = json.loads(datasets.encode(a[0], api="completions", model="m", ignore_eos=True))
    assert text["prompt"].startswith(a[0].messages[0]["content"])  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("shared-prefix:32:2000", (32, 2000, 1)), ("shared-prefix:8:100:4", (8, 100, 4)),
     ("synthetic", None)],
)  # fmt: skip
def test_parse(text: str, parsed: tuple[int, int, int] | None) -> None:
    assert datasets.parse_shared_prefix(text) == parsed


@pytest.mark.parametrize("text", ["shared-prefix:32", "shared-prefix:0:10", "shared-prefix:a:b"])
def test_parse_rejects_with_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="shared-prefix:SYSTEMS:TOKENS"):
        datasets.parse_shared_prefix(text)
