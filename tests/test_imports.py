"""Import every module of the package (catches undefined names and broken imports) and keep ``import
safegen`` and the CLI light."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import safegen

PACKAGE = Path(safegen.__file__).parent


def all_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


@pytest.mark.parametrize("module", all_modules())
def test_import(module):
    importlib.import_module(module)


def test_public_api_is_lazy():
    code = (
        "import sys, safegen, safegen.cli; "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'nudenet') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at start-up: {proc.stdout.strip()}"


def test_public_names():
    assert safegen.__version__ == importlib.metadata.version("safegen")
    assert safegen.get_concept("nudity").name == "nudity"
    assert "red" in safegen.load_concepts()
    assert callable(safegen.classify)
    assert set(safegen.__all__) <= set(dir(safegen))
    with pytest.raises(AttributeError):
        safegen.no_such_name  # noqa: B018


def test_every_registry_entry_imports_and_builds():
    """Each method names a real target and options class, a doc that exists, and builds with its defaults."""
    from safegen.bundled import BUNDLED
    from safegen.guards import get_guard
    from safegen.guards.base import Guard
    from safegen.methods import METHODS, MethodKind

    root = PACKAGE.parent
    assert {m.kind for m in METHODS.values()} == set(MethodKind)
    for method in METHODS.values():
        target, options = method.load(), method.config_class()
        assert callable(target), method.name
        assert options() is not None, method.name  # the defaults pass the options' own checks
        assert (root / method.doc).is_file(), method.doc
        if method.kind is MethodKind.GUARD:
            guard = get_guard(method.name, concept="red")
            assert isinstance(guard, Guard) and guard.name == method.name
            assert guard.describe()["name"] == method.name
        if method.kind is MethodKind.ERASE:
            assert method.default_model in BUNDLED and method.stages[-1] == "all", method.name
