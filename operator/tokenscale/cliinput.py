"""Manifest files as every CLI command reads them: bounded, and with one error format.

``validate``, ``plan``, ``render`` and ``bench`` report bad input the same way, one line per
problem: ``FILE: Kind/name: field.path: message; fix: …`` (``FILE: (file): …`` when the file
itself is refused), so a script or a person can grep for the field whichever command they ran.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ValidationError

from tokenscale import yamlsafe
from tokenscale.validation import FieldProblem, InvalidManifest, parse_manifest, problems_from


class InputError(click.ClickException):
    """Every problem of one input, one per line; exits 1 like any click error."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))

    def format_message(self) -> str:
        # click prefixes "Error: " once; the lines keep the shared format after it.
        return "invalid input:\n" + self.message


def file_problem(path: Path, message: str) -> str:
    return f"{path}: (file): {message}"


def documents(path: Path, max_bytes: int = yamlsafe.MAX_MANIFEST_BYTES) -> list[Any]:
    """The file's YAML documents, refusing hostile input (:mod:`tokenscale.yamlsafe`)."""
    try:
        return yamlsafe.load_file(path, max_bytes)
    except yamlsafe.UnsafeYAML as exc:
        raise InputError([file_problem(path, str(exc))]) from None


def label(path: Path, index: int, doc: Any) -> str:
    """``FILE: Kind/name`` for a document, whatever shape it has."""
    if not isinstance(doc, dict):
        return f"{path}: document #{index}"
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    kind = doc.get("kind")
    kind_text = kind if isinstance(kind, str) else "?"
    return f"{path}: {kind_text}/{name if isinstance(name, str) else f'#{index}'}"


def problem_lines(prefix: str, problems: Iterable[FieldProblem]) -> list[str]:
    return [f"{prefix}: {p}" for p in problems]


def parse(path: Path, index: int, doc: Any) -> BaseModel:
    """One document as its API model, or :class:`InputError` naming each bad field."""
    try:
        return parse_manifest(doc)
    except InvalidManifest as exc:
        raise InputError(problem_lines(label(path, index, doc), exc.problems)) from None


def validation_error(prefix: str, exc: ValidationError) -> InputError:
    """A pydantic error from a non-manifest input (operator config, bench result) as lines."""
    return InputError(problem_lines(prefix, problems_from(exc)))
