"""Read YAML that a person (or an attacker) handed to the CLI, in bounded time and memory.

``yaml.safe_load`` is safe from code execution but not from size: a 5 MB file is parsed in
pure Python for seconds, and an alias bomb ("billion laughs": nine anchors each holding nine
aliases of the previous one) is tiny on disk yet expands to 10^9 nodes the moment anything
walks the result (pydantic, json.dumps, the renderer). A self-referencing anchor makes a cycle
that recurses forever. Integers with more than 4,300 digits raise a bare ``ValueError`` inside
the constructor. This module refuses each of these with a message that names the file part at
fault, so every command reports hostile input the same way instead of hanging or printing a
traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

#: Manifests: the API server refuses objects over ~1.5 MiB (etcd's request limit), so a larger
#: manifest file can never be applied anyway; 2 MiB leaves room for several documents.
MAX_MANIFEST_BYTES = 2 * 1024 * 1024
#: ``kubectl get nodes -o yaml`` of a large cluster (about 5 KiB per node, thousands of nodes).
MAX_NODE_LIST_BYTES = 32 * 1024 * 1024
#: Nodes after alias expansion: a legitimate manifest has a few thousand; 200k still
#: validates in well under a second, an alias bomb has billions.
MAX_EXPANDED_NODES = 200_000
#: Aliases per file: anchors are rare in manifests (a merge key or two).
MAX_ALIASES = 1_000

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class UnsafeYAML(ValueError):
    """Input refused before or while parsing; the message says why and what to do."""


def read_text(path: Path, max_bytes: int = MAX_MANIFEST_BYTES) -> str:
    """The file's text, refusing oversize or non-UTF-8 files without reading them whole."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UnsafeYAML(
                f"file is {size / 1e6:.1f} MB, over the {max_bytes // (1024 * 1024)} MiB limit; "
                "fix: split it into smaller files"
            )
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)  # a file that grew since stat() is still bounded
    except OSError as exc:
        raise UnsafeYAML(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise UnsafeYAML(f"file is over the {max_bytes // (1024 * 1024)} MiB limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsafeYAML(
            f"not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r}); "
            "fix: save the file as UTF-8"
        ) from None


def _check_expansion(root: Node, max_nodes: int) -> None:
    """Count nodes as a consumer would see them (aliases expanded), stopping at the limit.

    Shared nodes are counted once per reference (that is what expansion costs); sizes are
    memoised per node so the count itself is linear in the file, and a node met again while
    still being counted is a cycle.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise UnsafeYAML("a recursive alias (an anchor that contains itself); fix: remove it")
        open_nodes.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            for child in node.value:
                total += size(child)
                if total > max_nodes:
                    break
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > max_nodes:
                    break
        open_nodes.discard(key)
        if total > max_nodes:
            raise UnsafeYAML(
                f"expands to more than {max_nodes} nodes through aliases (an alias bomb?); "
                "fix: write the repeated parts out or use fewer aliases"
            )
        sizes[key] = total
        return total

    size(root)


def _count_aliases(text: str, max_aliases: int) -> None:
    count = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            count += 1
            if count > max_aliases:
                raise UnsafeYAML(f"more than {max_aliases} aliases; fix: write the values out")


def load_all(
    text: str,
    max_nodes: int = MAX_EXPANDED_NODES,
    max_aliases: int = MAX_ALIASES,
) -> list[Any]:
    """Every non-empty document of ``text``, or :class:`UnsafeYAML` naming the problem."""
    try:
        if "*" in text:  # no alias without an asterisk: skip the extra pass for most files
            _count_aliases(text, max_aliases)
        loader = _Loader(text)
        docs: list[Any] = []
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                _check_expansion(node, max_nodes)
                doc = loader.construct_document(node)
                if doc is not None:
                    docs.append(doc)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise UnsafeYAML(f"not valid YAML: {exc}") from None
    except RecursionError:
        raise UnsafeYAML("nested too deeply; fix: flatten the document") from None
    except ValueError as exc:  # e.g. an integer over Python's 4,300-digit conversion limit
        if isinstance(exc, UnsafeYAML):
            raise
        raise UnsafeYAML(f"a value cannot be read: {exc}; fix: correct it") from None
    return docs


def load_file(path: Path, max_bytes: int = MAX_MANIFEST_BYTES) -> list[Any]:
    """:func:`read_text` then :func:`load_all`."""
    return load_all(read_text(path, max_bytes))
