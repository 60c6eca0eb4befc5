"""No command a user copies names the bare kind: KServe also has a kind InferenceService, so
``kubectl get inferenceservice`` may read KServe's objects. Docs, the chart's NOTES.txt, the
examples and the operator's own messages use ``tsvc``/``tsbench`` or the group-qualified name
(issue 17)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "examples").rglob("*.yaml")),
    *sorted((ROOT / "charts").rglob("*.txt")),
    *sorted((ROOT / "charts").rglob("README.md")),
    *sorted((ROOT / "operator" / "tokenscale").rglob("*.py")),
]
#: a kubectl verb followed (after flags/other words on the same line) by the bare kind
BARE = re.compile(
    r"kubectl\s+(?:get|describe|explain|edit|delete|scale|wait|patch|label|annotate|logs)\b"
    r"[^\n`]*?\b(inferenceservices?|inferencebenchmarks?)\b(?!\.tokenscale\.dev)(?![\w-])",
    re.IGNORECASE,
)


def test_commands_never_use_the_bare_kind_name() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {m.group(0)}"
        for path in SOURCES
        for m in BARE.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not found, "use tsvc/tsbench or <plural>.tokenscale.dev:\n" + "\n".join(found)


def test_the_pattern_catches_what_it_must() -> None:
    assert BARE.search("run `kubectl get inferenceservice llama -n ns`")
    assert BARE.search("kubectl describe InferenceService x")
    assert BARE.search("kubectl explain inferenceservice.spec.podTemplate")
    assert not BARE.search("kubectl get inferenceservices.tokenscale.dev x")
    assert not BARE.search("kubectl get tsvc x")
