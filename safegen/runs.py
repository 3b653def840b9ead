"""Run folders: the on-disk record of every run (benchmarks, erasure, attacks), resumable and mergeable.

One system for every verb that writes a run: the manifest (command, config, versions, git commit), the
rules of ``--out`` and ``--resume``, the default output folder and the samples files. Layout of a
benchmark's run folder (``--out``)::

    manifest.json          command, config, model, guard/adapter, preset, versions, git commit
    samples.jsonl          one JSON line per image: key, row id, prompt, seed, path, detections, ...
    samples.rank<R>.jsonl  process R's appends during a multi-process run (merged at the end)
    results.json           the metrics: a pure function of the config and the samples (no timings)
    timing.json            where the last session's time went (generation, classification, writing)
    images/                the PNGs, named after each image's place in the run

Guarantees:

- **Atomic appends.** A batch of sample lines is one ``write`` on an ``O_APPEND`` descriptor, made after
  its PNGs are in place (each written to a temporary file and renamed). A failed or short write (disk
  full) is cut back to the file's previous size, so the file never holds half a line.
- **Resume.** ``--resume`` reads the lines already written (a torn last line, from a crash in the
  middle of a write, is dropped), skips those images and generates the rest; the config recorded in
  ``manifest.json`` must equal the new one, key by key, or the resume is refused naming the differing
  keys (library versions may differ: each resume is added to the manifest's ``resumed`` list). At the
  end ``samples.jsonl`` is rewritten in the run's canonical order and ``results.json`` is computed from
  it, so an interrupted-then-resumed run gives the same bytes as an uninterrupted one.
- **Processes.** Under ``accelerate launch`` each process takes every N-th image, appends to its own
  ``samples.rank<R>.jsonl``, and the main process merges them after a barrier: the merged folder equals
  a single-process run's.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safegen.errors import SafegenError

MANIFEST = "manifest.json"
LOCK = ".lock"
NESTED = ("reference",)  # runs a benchmark keeps inside its own folder (bench quality's reference images)
SAMPLES = "samples.jsonl"
RESULTS = "results.json"
TIMING = "timing.json"
IMAGES = "images"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
PACKAGES = ("safegen", "torch", "diffusers", "transformers", "accelerate", "nudenet", "onnxruntime", "numpy")


# --------------------------------------------------------------------------- processes
@dataclass
class Shard:
    """This process's place in a run: process ``index`` of ``count``, and a barrier across them."""

    index: int = 0
    count: int = 1
    _state: Any = None

    @property
    def main(self) -> bool:
        return self.index == 0

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()

    def mine(self, position: int) -> bool:
        """Whether the image at ``position`` in the run's canonical order belongs to this process."""
        return position % self.count == self.index

    @classmethod
    def from_env(cls, cpu: bool) -> Shard:
        """One process, or this process's rank under ``accelerate launch`` / ``torchrun`` (WORLD_SIZE > 1).

        Args:
            cpu: the run computes on the CPU (accelerate then joins the processes with gloo).
        """
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=cpu)
        return cls(state.process_index, state.num_processes, state)


# --------------------------------------------------------------------------- records
def versions() -> dict[str, str | None]:
    """Python's and the main packages' versions (None when a package is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, Any] | None:
    """The commit of the safegen checkout and whether it has uncommitted changes (None outside git)."""
    where = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are kept as values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose values differ, as ``key (run: X, now: Y)``; JSON-normalised first."""
    a, b = flatten(json.loads(json.dumps(old))), flatten(json.loads(json.dumps(new)))
    return [
        f"{k} (run: {a.get(k)!r}, now: {b.get(k)!r})"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def _disk_full(exc: OSError, path: Path) -> SafegenError:
    return SafegenError(
        f"Disk full while writing {path}; the run folder is still valid: free some space and run the same "
        "command with --resume."
    )


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file in the same folder, then ``os.replace``)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    write_text(path, text)


def write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in DISK_FULL:
            raise _disk_full(exc, path) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SafegenError(f"{path} is not valid JSON ({exc}); the run folder is damaged.") from None


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append whole lines in one ``write``; on any failure the file is cut back to its previous size.

    Raises:
        SafegenError: the disk is full (the file is left as it was).
    """
    data = "".join(lines).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
        except BaseException as exc:
            os.ftruncate(fd, size)
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                raise _disk_full(exc, path) from None
            raise
    finally:
        os.close(fd)


def read_lines(path: Path, repair: bool) -> list[dict]:
    """The complete JSON lines of a samples file; a torn last line (no newline) is dropped (and cut off
    the file when ``repair``). A bad complete line means the folder was edited: an error."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(end)
    records = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SafegenError(
                f"{path} line {number} is not valid JSON; the run folder is damaged."
            ) from None
    return records


# --------------------------------------------------------------------------- the folder
class RunFolder:
    """A run folder (see the module docstring). Open it with :meth:`open`."""

    def __init__(self, path: Path, shard: Shard | None = None) -> None:
        self.path = path
        self.shard = shard or Shard()

    @property
    def samples_file(self) -> Path:
        """Where this process appends: ``samples.jsonl``, or ``samples.rank<R>.jsonl`` under several."""
        if self.shard.count == 1:
            return self.path / SAMPLES
        return self.path / f"samples.rank{self.shard.index}.jsonl"

    @classmethod
    def open(
        cls, path: str | Path, manifest: dict[str, Any], *, resume: bool, shard: Shard | None = None
    ) -> RunFolder:
        """Create a run folder, or reopen it with ``resume``.

        Every process checks the folder before the main one creates it, so all of them fail alike.

        Raises:
            SafegenError: the folder holds a run and ``resume`` is off; it holds another configuration (the
                differing keys are named); it is a file, or a non-empty folder without a manifest.
        """
        run = cls(Path(path).expanduser(), shard)
        existing = run.check(manifest, resume)
        run.shard.barrier()
        if run.shard.main:
            lock_folder(run.path)
            if existing:
                for file in run.sample_files():
                    read_lines(file, repair=True)
                run.record_resume(manifest)
            else:
                run.create(manifest)
        run.shard.barrier()
        return run

    def check(
        self, manifest: dict[str, Any], resume: bool, what: str = "run", ignore: Iterable[str] = ()
    ) -> bool:
        """Whether the folder already holds this run (see :meth:`open` for the errors).

        Args:
            what: the kind of run, for messages (``run``, ``SC-DPO run``, ...).
            ignore: config keys that may differ on ``--resume`` (e.g. a training run's ``steps``).
        """
        path = self.path
        if path.exists() and not path.is_dir():
            raise SafegenError(f"--out {path} exists and is not a folder.")
        if (path / MANIFEST).is_file():
            if not resume:
                raise SafegenError(
                    f"{path} is not empty: it already holds {_article(what)} {what}; pass --resume to finish "
                    "it, or choose another --out."
                )
            old = read_json(path / MANIFEST)
            if not isinstance(old, dict):
                raise SafegenError(f"{path / MANIFEST} is not a JSON object; the run folder is damaged.")
            skip = set(ignore)
            diff = [
                d
                for d in config_diff(old.get("config", {}), manifest["config"])
                if d.split(" ")[0] not in skip
            ]
            if diff:
                names = ", ".join(dict.fromkeys(d.split(" ")[0] for d in diff))
                raise SafegenError(
                    f"Refusing to --resume {path}: it was made with other settings for {names} (use a new "
                    f"--out to change them); differing keys: {'; '.join(diff)}."
                )
            return True
        if resume:
            raise SafegenError(f"--resume: {path} holds no {what} ({MANIFEST} missing).")
        if path.is_dir() and any(p.name not in (LOCK, *NESTED) for p in path.iterdir()):
            raise SafegenError(f"--out {path} is not empty and holds no run (no {MANIFEST}); choose another.")
        return False

    def create(self, manifest: dict[str, Any]) -> None:
        """Write the manifest first (atomically): a folder without one is empty, so a retry can use it."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json(self.path / MANIFEST, manifest)
            (self.path / IMAGES).mkdir(exist_ok=True)
        except OSError as exc:
            raise SafegenError(f"Cannot create the run folder {self.path}: {exc.strerror or exc}.") from None

    def manifest(self) -> dict[str, Any]:
        return read_json(self.path / MANIFEST)

    def record_resume(self, manifest: dict[str, Any]) -> None:
        """Add this session (command, time, versions, git, processes) to the manifest's ``resumed`` list,
        so a resume under other library versions is on record."""
        current = self.manifest()
        session = {k: manifest.get(k) for k in ("command", "created", "versions", "git", "processes")}
        current["resumed"] = [*current.get("resumed", []), session]
        write_json(self.path / MANIFEST, current)

    def sample_files(self) -> list[Path]:
        main = self.path / SAMPLES
        return ([main] if main.is_file() else []) + sorted(self.path.glob("samples.rank*.jsonl"))

    def samples(self) -> dict[str, dict]:
        """Every sample written so far, by key (from ``samples.jsonl`` and any per-process files)."""
        found: dict[str, dict] = {}
        for file in self.sample_files():
            for record in read_lines(file, repair=False):
                found.setdefault(record["key"], record)
        return found

    def image(self, relative: str, pixels: Any) -> None:
        """Write one PNG atomically at ``relative`` (inside the folder)."""
        from safegen.outputs import write_png

        target = self.path / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_png(pixels, target)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise _disk_full(exc, target) from None
            raise

    def append(self, records: list[dict]) -> None:
        """Append sample lines (one atomic write) to this process's samples file."""
        from safegen.outputs import json_line

        append_lines(self.samples_file, [json_line(r) for r in records])

    def finalize(self, order: list[str]) -> list[dict]:
        """Merge every samples file into ``samples.jsonl`` in the canonical ``order`` (main process only).

        Raises:
            SafegenError: a sample of ``order`` is missing (a process did not finish).
        """
        found = self.samples()
        missing = [k for k in order if k not in found]
        if missing:
            raise SafegenError(
                f"{len(missing)} images of the run are missing (first: {missing[0]}); "
                "run again with --resume."
            )
        records = [found[k] for k in order]
        from safegen.outputs import json_line

        write_text(self.path / SAMPLES, "".join(json_line(r) for r in records))
        for file in self.path.glob("samples.rank*.jsonl"):
            file.unlink()
        return records

    def release(self) -> None:
        """Give the folder's write lock back (the run is over)."""
        release_folder(self.path)

    def write(self, name: str, data: Any) -> None:
        write_json(self.path / name, data)


_LOCKS: dict[str, int] = {}  # run folder -> the open descriptor holding its lock (one per process)


def lock_folder(path: Path) -> None:
    """Take a run folder's write lock for this process (created if needed); a second writer is refused.

    A POSIX record lock on ``<folder>/.lock``: the kernel releases it when the process ends, killed or not,
    so an interrupted run never blocks its ``--resume``; the same process may take it again.

    Raises:
        SafegenError: another process holds it.
    """
    import fcntl

    key = str(path.resolve()) if path.exists() else str(path.absolute())
    if key in _LOCKS:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SafegenError(f"Cannot create the run folder {path}: {exc.strerror or exc}.") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SafegenError(
            f"{path} is being written by another safegen process; wait for it to end or choose another --out."
        ) from None
    _LOCKS[str(path.resolve())] = fd


def holds_lock(path: Path) -> bool:
    """Whether this process holds the run folder's write lock."""
    return str(Path(path).resolve()) in _LOCKS


def release_folder(path: Path) -> None:
    """Give a run folder's lock back (at the end of a run; the end of the process does it too)."""
    fd = _LOCKS.pop(str(Path(path).resolve()), None)
    if fd is not None:
        os.close(fd)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def default_out_dir(name: str, root: str | Path = "outputs") -> Path:
    """``<root>/<name>-<date>-<time>``: a new folder per run, so runs never overwrite each other.

    Several processes (``accelerate launch``) must be given one ``--out`` instead.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SafegenError("Several processes need one run folder: pass --out.")
    return Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def new_manifest(benchmark: str, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The manifest of a new run: command, config (what defines the results), the rest, versions, git."""
    return {
        "benchmark": benchmark,
        "command": ["safegen", *sys.argv[1:]] if sys.argv and "safegen" in sys.argv[0] else list(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        **extra,
        "versions": versions(),
        "git": git_commit(),
    }
