"""User-facing errors.

Every mistake a user can make (unknown name, bad number, missing file, offline hub id) raises
:class:`SafegenError`. The CLI turns it into one line on stderr and exit code 2; library callers get a
normal exception with the same message.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SafegenError(Exception):
    """An error caused by the user's input; its message is one line meant for a person."""

    exit_code = 2


def unknown(what: str, name: str, choices: Iterable[str]) -> SafegenError:
    """``Unknown model 'minii'. Did you mean 'mini'? Available: mini, mini-ar``."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listed = ", ".join(choices[:20]) + (", ..." if len(choices) > 20 else "")
    return SafegenError(f"Unknown {what} '{name}'.{hint} Available: {listed}")
