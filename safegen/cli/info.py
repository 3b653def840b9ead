"""CLI verbs that list what safegen knows: ``models``, ``methods``, ``guards`` and ``concepts``.

Each prints a registry: :mod:`safegen.bundled`, :mod:`safegen.methods`, :mod:`safegen.guards`,
:mod:`safegen.concepts`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from safegen.cli.common import ConceptsFileOpt, JsonOpt, concepts_files
from safegen.cli.ui import print_json, print_table


def models(json: JsonOpt = False) -> None:
    """List the bundled models."""
    from safegen.bundled import list_models

    rows = list_models()
    if json:
        print_json(rows)
        return
    print_table(rows, ["name", "kind", "available", "description", "path"], title="Models")


def methods(json: JsonOpt = False) -> None:
    """List the safety methods, what they target and how far along they are."""
    from safegen.methods import list_methods

    rows = list_methods()
    if json:
        print_json(rows)
        return
    print_table(rows, ["name", "kind", "family", "baseline", "status", "summary"], title="Methods")


def concepts(concepts_file: ConceptsFileOpt = None, json: JsonOpt = False) -> None:
    """List the concepts that can be erased or guarded against."""
    from safegen.concepts import list_concepts

    rows = list_concepts(concepts_files(concepts_file))
    if json:
        print_json(rows)
        return
    print_table(rows, ["name", "kind", "axis", "keywords", "safe_text"], title="Concepts")


def guards(
    name: Annotated[str | None, typer.Argument(help="Only this guard.", show_default=False)] = None,
    json: JsonOpt = False,
) -> None:
    """List the inference guards with their presets and options (for --strength and --set)."""
    from safegen.guards import list_guards

    rows = list_guards([name] if name else None)
    if json:
        print_json(rows)
        return
    for row in rows:
        presets = ", ".join(row["presets"]) or "-"
        print_table(
            row["options"],
            ["name", "type", "default", "allowed", "help"],
            title=f"{row['name']}: {row['summary']} (presets: {presets})",
        )


def register(app: typer.Typer) -> None:
    for verb in (models, methods, concepts, guards):
        app.command()(verb)
