"""The hostile-input corpus (``tests/hostile_cases.py``): every case is one line on stderr, exit code 2, no
traceback, and nothing written: neither its ``--out`` nor any other file in the working folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hostile_cases import cases, write_fixtures

from safegen.cli import main


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_fixtures(tmp_path_factory.mktemp("hostile"))


class _Names(dict):
    """Fixture names standing for their files, enough to list the cases' ids at collection time."""

    def __missing__(self, key: str) -> Path:
        return Path(key)


def _ids() -> list[str]:
    return [c[0] for c in cases(_Names(), Path("tiny"))]


def test_the_corpus_is_large_and_every_verb_is_in_it():
    ids = _ids()
    assert len(ids) >= 150 and len(set(ids)) == len(ids)
    verbs = {i.split("-")[0] for i in ids}
    assert verbs >= {"gen", "cls", "concepts", "guards", "methods", "models", "mini", "i2p", "batk", "erase",
                     "atk", "rep"}  # fmt: skip


@pytest.mark.parametrize("case", _ids())
def test_hostile_input(case, fixtures, tiny_sd_dir, tmp_path, capsys, monkeypatch):
    ((name, argv, words),) = [c for c in cases(fixtures, tiny_sd_dir) if c[0] == case]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("SAFEGEN_CONCEPTS", raising=False)
    out = work / "out"
    argv = [str(out) if a == "OUT" else a for a in argv]
    before = {p: p.stat().st_mtime_ns for p in Path(fixtures["a_file"]).parent.rglob("*")}
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (name, code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("Error: ") and words in err, (words, err)
    assert not out.exists(), f"{name} wrote {out}"
    assert not os.listdir(work), f"{name} wrote into the working folder: {os.listdir(work)}"
    after = {p: p.stat().st_mtime_ns for p in Path(fixtures["a_file"]).parent.rglob("*")}
    assert after == before, f"{name} changed its input files"


def test_concepts_env_variable(fixtures, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAFEGEN_CONCEPTS", str(fixtures["missing"]))
    assert main(["concepts"]) == 2
    assert "$SAFEGEN_CONCEPTS names" in capsys.readouterr().err
    monkeypatch.setenv("SAFEGEN_CONCEPTS", str(fixtures["c_kind.yaml"]))
    assert main(["concepts"]) == 2
    assert "kind must be one of" in capsys.readouterr().err
