"""Hostile CLI input: every command refuses it in bounded time and memory, in one format.

The format is ``FILE: Kind/name: field: message`` (or ``FILE: (file): message`` when the file
itself is refused) for ``validate``, ``plan``, ``render`` and ``bench`` alike; no traceback.
Memory is measured in a child process (its peak RSS), so what the parent test process already
holds does not count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import tokenscale.render.cli
import tokenscale.validation  # noqa: F401
from tokenscale import yamlsafe
from tokenscale.cli import main

TINY = (Path(__file__).parents[2] / "examples" / "tiny-cpu.yaml").read_text()


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": ``width ** levels`` strings from a few hundred bytes."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


#: name → (file bytes, a fragment every command's message must contain).
HOSTILE: dict[str, tuple[bytes, str]] = {
    "alias_bomb": (alias_bomb().encode(), "(file): expands to more than"),
    "alias_bomb_in_spec": (
        (TINY + "\n  x: &x [1,1,1,1,1,1,1,1,1,1]\n" + alias_bomb().replace("a", "b")).encode(),
        "(file):",
    ),
    "recursive_alias": (b"kind: InferenceService\nspec: &s {pools: [*s]}\n", "recursive alias"),
    "five_megabytes": (TINY.encode() + b"#" + b"x" * (5 * 1024 * 1024) + b"\n", "MiB limit"),
    "not_utf8": (TINY.encode() + b"\n# \xff\xfe\n", "(file): not UTF-8"),
    "huge_integer": (
        TINY.replace("maxReplicas: 2", "maxReplicas: " + "9" * 5000).encode(),
        "(file):",
    ),
    "big_integer": (
        TINY.replace("maxReplicas: 2", "maxReplicas: " + "9" * 40).encode(),
        "spec.pools[0].maxReplicas:",
    ),
    "infinite_float": (
        TINY.replace("targetPerReplica: 150", "targetPerReplica: 1e400").encode(),
        "spec.scaling.targetPerReplica:",
    ),
    "unicode_name": (
        TINY.replace("name: tiny-cpu", "name: tïny-☃-\u202e").encode(),
        "metadata.name:",
    ),
    "non_mapping_document": (b"- kind: InferenceService\n- 2\n", "(root)"),
    "scalar_document": (b"just a string\n", ""),
    "metadata_not_a_mapping": (
        TINY.replace("metadata:\n  name: tiny-cpu", "metadata: 7").encode(),
        "metadata:",
    ),
    "deep_nesting": (
        b"kind: InferenceService\nspec: " + b"[" * 100_000 + b"]" * 100_000,
        "(file):",
    ),
    "tabs_and_garbage": (b"kind: InferenceService\n\tspec: {{{\n", "(file): not valid YAML"),
}


FIGURES: dict[str, float] = {"cases": 0, "max_seconds": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    """``TOKENSCALE_RELIABILITY_DIR=dir``: the measured figures to ``dir/fuzz_cli.json``."""
    yield
    out = os.environ.get("TOKENSCALE_RELIABILITY_DIR")
    if out:
        (Path(out) / "fuzz_cli.json").write_text(json.dumps(FIGURES, sort_keys=True))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("command", ["validate", "plan", "render"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_manifest_is_refused_quickly_naming_the_part(
    tmp_path: Path, command: str, case: str
) -> None:
    data, fragment = HOSTILE[case]
    path = _write(tmp_path, case, data)
    # CPU time, not wall time: the bound is about the work done (an expanded alias bomb burns
    # minutes of CPU), and a machine shared with other test beds stretches wall time only.
    start = time.process_time()
    result = CliRunner().invoke(main, [command, str(path)])
    elapsed = time.process_time() - start
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    FIGURES["cases"] += 1
    FIGURES["max_seconds"] = max(FIGURES["max_seconds"], round(elapsed, 4))
    assert elapsed < 1.0, f"{command} {case}: {elapsed:.2f} CPU s"
    out = result.output
    assert "Traceback" not in out and "pydantic" not in out.lower(), out
    assert f"{path}: " in out, out  # every line starts with the file
    assert fragment in out, out
    if command != "validate":  # validate prints "valid" lines for good documents
        assert "For further information visit" not in out, out


def test_plan_prints_field_lines_not_raw_pydantic(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad", TINY.replace("maxReplicas: 2", "maxReplicas: -3").encode())
    lines = {
        cmd: [
            line
            for line in CliRunner().invoke(main, [cmd, str(path)]).output.splitlines()
            if "maxReplicas" in line
        ]
        for cmd in ("validate", "plan", "render")
    }
    expected = f"{path}: InferenceService/tiny-cpu: spec.pools[0].maxReplicas: "
    for cmd, found in lines.items():
        assert len(found) == 1 and found[0].startswith(expected), (cmd, found)
    assert lines["plan"] == lines["render"] == lines["validate"]


def test_hostile_operator_config_and_node_list(tmp_path: Path) -> None:
    good = _write(tmp_path, "svc", TINY.encode())
    bomb = _write(tmp_path, "bomb", alias_bomb().encode())
    for args in (
        ["plan", str(good), "--config", str(bomb)],
        ["render", str(good), "--nodes", str(bomb)],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and f"{bomb}: (file): expands" in result.output, result.output
    bad_cfg = _write(tmp_path, "cfg", b"pods: {tolerations: 5}\n")
    result = CliRunner().invoke(main, ["plan", str(good), "--config", str(bad_cfg)])
    assert result.exit_code == 1
    assert f"{bad_cfg}: invalid operator config: pods.tolerations: " in result.output, result.output


def test_bench_inputs_use_the_same_format(tmp_path: Path) -> None:
    broken = tmp_path / "r.json"
    broken.write_text(json.dumps({"config": {"url": 5}}))
    for args in (["bench", "report", str(broken), "--html", str(tmp_path / "o.html")],
                 ["bench", "merge", str(broken)]):  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, (result.output, result.exception)
        assert isinstance(result.exception, SystemExit)
        assert f"{broken}: bench result: " in result.output and "Traceback" not in result.output
    not_utf8 = tmp_path / "r2.json"
    not_utf8.write_bytes(b"\xff\xfe{")
    result = CliRunner().invoke(main, ["bench", "merge", str(not_utf8)])
    assert result.exit_code == 1 and f"{not_utf8}: bench result: (root): " in result.output
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "hi"}\n{not json\n')
    result = CliRunner().invoke(
        main, ["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--dataset", str(data)]
    )
    assert result.exit_code == 1 and f"{data}: (file): " in result.output, result.output


def test_bounded_memory_in_a_child_process(tmp_path: Path) -> None:
    """Every hostile file through validate and plan in one child: under 20 MB over imports."""
    paths = [str(_write(tmp_path, name, data)) for name, (data, _) in HOSTILE.items()]
    script = (
        "import resource, sys\n"
        "from click.testing import CliRunner\n"
        "from tokenscale.cli import main\n"
        "import tokenscale.render.cli, tokenscale.validation\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for p in sys.argv[1:]:\n"
        "    for cmd in ('validate', 'plan'):\n"
        "        assert CliRunner().invoke(main, [cmd, p]).exit_code == 1, (cmd, p)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(base // 1024, peak // 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    base_mb, peak_mb = map(int, out.stdout.split())
    FIGURES["peak_rss_mb"], FIGURES["rss_after_imports_mb"] = peak_mb, base_mb
    # The imports alone take ~95 MB; what the hostile inputs add is the bounded part (an
    # alias bomb expanded by pydantic would take gigabytes).
    assert peak_mb - base_mb < 20, f"peak RSS {peak_mb} MB, after imports {base_mb} MB"


def test_loader_limits_are_exact() -> None:
    ok = "a: &a [1, 2]\nb: [" + ", ".join(["*a"] * 10) + "]\n"
    assert yamlsafe.load_all(ok) == [{"a": [1, 2], "b": [[1, 2]] * 10}]
    with pytest.raises(yamlsafe.UnsafeYAML, match="more than 30 nodes"):
        yamlsafe.load_all(ok, max_nodes=30)
    with pytest.raises(yamlsafe.UnsafeYAML, match="more than 5 aliases"):
        yamlsafe.load_all(ok, max_aliases=5)
    assert yamlsafe.load_all("---\n---\nkind: X\n") == [{"kind": "X"}]
