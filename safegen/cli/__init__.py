"""The ``safegen`` command line: one module per verb group, the shared option declarations once.

Each verb is a thin function that declares its options (:mod:`safegen.cli.common`) and forwards to an
importable function that returns data (``safegen.api``, ``safegen.bench``, ``safegen.recipes``, the
registries); the verb modules only print. Backends are imported inside the verbs, so ``safegen --help`` is
fast and works before torch is loaded.

    safegen generate "a red striped circle" --n 4 --out outputs/demo      # safegen/cli/generate.py
    safegen erase --method vce --concept red --model mini-ar               # safegen/cli/erase.py
    safegen bench mini --concept red --guard sp                            # safegen/cli/bench.py
    safegen concepts --json                                                # safegen/cli/info.py
"""

from __future__ import annotations

import os

import typer

from safegen.cli import attack, bench, calibrate, erase, export, generate, info
from safegen.cli.ui import clear_notes, print_error
from safegen.errors import SafegenError

app = typer.Typer(
    name="safegen",
    help="Make text-to-image models safe: erase concepts, guard generation, measure the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Reproducible benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
generate.register(app)  # generate, classify
info.register(app)  # models, methods, concepts, guards
erase.register(app)  # erase
bench.register(app, bench_app)  # bench mini, bench i2p, bench attack, report
attack.register(app)  # attack
export.register(app)  # export
calibrate.register(app)  # calibrate


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2, never a traceback."""
    # transformers warns at import that torchvision is absent (safegen never needs it); keep stderr for
    # what matters. A user's own TRANSFORMERS_VERBOSITY wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    clear_notes()
    try:
        rv = app(args=argv, prog_name="safegen", standalone_mode=False)
    except SafegenError as exc:
        print_error(str(exc))
        return exc.exit_code
    except typer.Abort:
        print_error("Aborted.")
        return 130
    except OSError as exc:  # the file system said no (permissions, disk full): not a bug in safegen
        where = f": {exc.filename}" if exc.filename else ""
        print_error(f"{exc.strerror or exc}{where}")
        return 2
    except typer.TyperException as exc:  # Typer's usage errors: bad option, missing argument, out of range
        if _is_help_request(exc):
            typer.echo(exc.format_message())
            return 0
        print_error(exc.format_message())
        return getattr(exc, "exit_code", 2)
    return rv if isinstance(rv, int) else 0


def _is_help_request(exc: Exception) -> bool:
    """``safegen`` or ``safegen bench`` without arguments asks for help (Typer raises it as an error)."""
    return type(exc).__name__ == "NoArgsIsHelpError"
