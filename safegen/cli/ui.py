"""Output helpers for the CLI: Rich tables, progress bars, JSON and one-line errors.

Only the CLI layer uses Rich; library functions return data and take a ``progress(done, total)``
callback, which :func:`progress_bar` provides.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any


def stdout_console():
    from rich.console import Console

    return Console(soft_wrap=False)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no Rich markup, so it can be piped)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_error(message: str) -> None:
    """One line on stderr, whatever the message holds."""
    sys.stderr.write("Error: " + " ".join(str(message).split()) + "\n")


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """A Rich table of ``rows`` showing ``columns`` (lists are joined with commas, None shows as '-')."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_cell(row.get(col)) for col in columns))
    stdout_console().print(table)


def print_mapping(data: Mapping[str, Any], title: str | None = None) -> None:
    """A two-column table of a nested mapping, flattened to dotted keys (lists show their length)."""
    rows = [{"key": k, "value": v} for k, v in _flatten(data)]
    print_table(rows, ["key", "value"], title=title)


_NOTES: list[str] = []  # said once work starts (the first progress update): never before an input error


def note_when_running(text: str) -> None:
    """Queue a one-line note for stderr, printed at the first progress update of this command."""
    _NOTES.append(text)


def clear_notes() -> None:
    _NOTES.clear()


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[..., None]]:
    """A Rich progress bar on stderr; yields ``update(done, total=None, ...)`` for library callbacks.

    The bar appears at the first update (so input errors and model loading print no empty bar) and only
    when stderr is a terminal (so logs and pipes stay clean).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = stderr_console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    progress = Progress(*columns, console=console, transient=True)
    task = None

    def update(done: int, total: int | None = None, *_: Any, **__: Any) -> None:
        nonlocal task
        while _NOTES:
            console.print(_NOTES.pop(0), highlight=False, soft_wrap=True)
        if not console.is_terminal:
            return
        if task is None:
            progress.start()
            task = progress.add_task(description, total=total)
        progress.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if task is not None:
            progress.stop()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, name + ".")
        elif isinstance(value, (list, tuple)) and len(value) > 8:
            yield name, f"[{len(value)} items]"
        else:
            yield name, value


class StageBars(ExitStack):
    """``progress(stage, done, total)``: one progress bar per stage, the previous one closed first."""

    def __init__(self) -> None:
        super().__init__()
        self.stage: str | None = None
        self.update: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.update = stage, self.enter_context(progress_bar(stage.capitalize()))
        self.update(done, total)
