"""Run folders: atomic appends, resume after an interruption or a SIGKILL (identical results), refusal of
another configuration, a full disk, and sharded runs merging into one folder equal to a single run's."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from safegen import runs
from safegen.bench.evaluate import Settings
from safegen.bench.i2p import run_i2p
from safegen.cli import main
from safegen.errors import SafegenError
from safegen.runs import Shard, append_lines, config_diff, read_lines

ROOT = Path(__file__).resolve().parents[1]
HEADER = "prompt,categories,hard,sd_seed,sd_guidance_scale\n"
ROWS = [
    "a nude figure,sexual,0,5,7\n",
    "a fight,violence,1,6,9\n",
    "a crowd,sexual,0,7,7\n",
]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.csv"
    path.write_text(HEADER + "".join(ROWS))
    return path


def bench(model: Path, prompts: Path, out: Path, **kw):
    settings = Settings(model=str(model), steps=1, device="cpu", batch_size=2)
    options = {"images_per_prompt": 2, **kw}
    return run_i2p(prompts=prompts, settings=settings, out=out, **options)


def files(out: Path) -> tuple[str, str]:
    return (out / "results.json").read_text(), (out / "samples.jsonl").read_text()


@pytest.fixture
def reference(tiny_sd_dir, prompts, tmp_path) -> tuple[str, str]:
    """An uninterrupted single-process run: (results.json, samples.jsonl)."""
    bench(tiny_sd_dir, prompts, tmp_path / "reference")
    return files(tmp_path / "reference")


# --------------------------------------------------------------------------- appends
def test_append_is_all_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "samples.jsonl"
    append_lines(path, ['{"key": "a"}\n'])
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, data[:5])  # part of the batch lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "write", full_disk)
    with pytest.raises(SafegenError, match="Disk full.*--resume"):
        append_lines(path, ['{"key": "b"}\n', '{"key": "c"}\n'])
    monkeypatch.setattr(runs.os, "write", lambda fd, data: real_write(fd, data[:3]))  # a short write
    with pytest.raises(SafegenError, match="Disk full"):
        append_lines(path, ['{"key": "d"}\n'])
    assert path.read_text() == '{"key": "a"}\n'


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c", "detec')
    assert [r["key"] for r in read_lines(path, repair=False)] == ["a", "b"]
    read_lines(path, repair=True)
    assert path.read_text() == '{"key": "a"}\n{"key": "b"}\n'
    path.write_text('{"key": "a"}\nnot json\n')
    with pytest.raises(SafegenError, match="line 2 is not valid JSON"):
        read_lines(path, repair=False)


def test_config_diff_names_keys():
    old = {"images_per_prompt": 2, "preset": {"name": "i2p", "threshold": 0.6}, "steps": 20}
    new = {"images_per_prompt": 1, "preset": {"name": "i2p", "threshold": 0.5}, "steps": 20}
    diff = config_diff(old, new)
    assert [d.split(" ")[0] for d in diff] == ["images_per_prompt", "preset.threshold"]
    assert config_diff(old, json.loads(json.dumps(old))) == []


# --------------------------------------------------------------------------- resume
def test_resume_after_interruption_is_identical(tiny_sd_dir, prompts, tmp_path, reference):
    out = tmp_path / "run"
    calls = []

    def stop_after_first_batch(done, total):
        calls.append(done)
        if len(calls) == 2:  # the first call reports 0 done; the second follows the first batch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench(tiny_sd_dir, prompts, out, progress=stop_after_first_batch)
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2 and not (out / "results.json").exists()
    with pytest.raises(SafegenError, match="already holds a run; pass --resume"):
        bench(tiny_sd_dir, prompts, out)
    seen = []
    bench(tiny_sd_dir, prompts, out, resume=True, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (2, 6) and seen[-1] == (6, 6)  # only the 4 missing images were made
    assert files(out) == reference
    keys = [json.loads(x)["key"] for x in (out / "samples.jsonl").read_text().splitlines()]
    assert keys == ["0/0", "0/1", "1/0", "1/1", "2/0", "2/1"]  # no row lost or repeated


def test_resume_after_sigkill_is_identical(tiny_sd_dir, prompts, tmp_path, reference):
    """A real ``safegen bench i2p`` process, SIGKILLed as soon as its first image is recorded."""
    out = tmp_path / "run"
    args = ["bench", "i2p", "--prompts", prompts, "--model", tiny_sd_dir, "--steps", "1", "--device", "cpu"]
    args += ["--images-per-prompt", "2", "--batch-size", "1", "--out", out]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "safegen", *map(str, args)], env=env, stderr=subprocess.PIPE
    )
    samples, deadline = out / "samples.jsonl", time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline:
        if samples.is_file() and samples.stat().st_size:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not (out / "results.json").exists()
    assert main([str(a) for a in [*args, "--resume", "--json"]]) == 0
    assert files(out) == reference


def test_resume_refuses_another_configuration(tiny_sd_dir, prompts, tmp_path, capsys):
    out = tmp_path / "run"
    bench(tiny_sd_dir, prompts, out, limit=1)
    before = (out / "manifest.json").read_text()
    args = ["bench", "i2p", "--prompts", prompts, "--model", tiny_sd_dir, "--steps", "1", "--device", "cpu"]
    code = main(
        [str(a) for a in [*args, "--limit", "1", "--images-per-prompt", "3", "--out", out, "--resume"]]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "differing keys: images_per_prompt (run: 2, now: 3)" in err
    assert "steps" not in err and (out / "manifest.json").read_text() == before


def test_full_disk_mid_run_then_resume(tiny_sd_dir, prompts, tmp_path, monkeypatch, capsys, reference):
    out = tmp_path / "run"
    real_write, appends = os.write, []

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("samples.jsonl"):
            appends.append(len(data))
            if len(appends) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(runs.os, "write", write)
    args = ["bench", "i2p", "--prompts", prompts, "--model", tiny_sd_dir, "--steps", "1", "--device", "cpu"]
    args += ["--images-per-prompt", "2", "--batch-size", "2", "--out", out]
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Disk full" in err and "--resume" in err
    assert len(read_lines(out / "samples.jsonl", repair=False)) == 2  # the first batch, whole
    monkeypatch.setattr(runs.os, "write", real_write)
    assert main([str(a) for a in [*args, "--resume", "--json"]]) == 0
    assert files(out) == reference


# --------------------------------------------------------------------------- several processes
class ThreadBarrier:
    """Stands in for accelerate's PartialState: ``wait_for_everyone`` across threads."""

    def __init__(self, barrier: threading.Barrier) -> None:
        self.barrier = barrier

    def wait_for_everyone(self) -> None:
        self.barrier.wait(timeout=120)


def test_two_shards_merge_to_the_single_run(tiny_sd_dir, prompts, tmp_path, monkeypatch, reference):
    barrier, lock, ranks = threading.Barrier(2), threading.Lock(), iter(range(2))

    def from_env(cpu: bool) -> Shard:
        with lock:
            return Shard(next(ranks), 2, ThreadBarrier(barrier))

    monkeypatch.setattr(Shard, "from_env", staticmethod(from_env))
    from safegen import loader

    real_load = loader.load_model

    def load_model(*args, **kwargs):  # diffusers' loading is not thread-safe; processes don't share it
        with lock:
            return real_load(*args, **kwargs)

    monkeypatch.setattr(loader, "load_model", load_model)
    out, results, errors = tmp_path / "run", [], []

    def worker() -> None:
        try:
            results.append(bench(tiny_sd_dir, prompts, out))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    assert sum(r is None for r in results) == 1  # only the main process reports
    assert files(out) == reference
    assert not list(out.glob("samples.rank*.jsonl"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["processes"] == 2


@pytest.mark.slow
def test_accelerate_launch_two_processes(tiny_sd_dir, prompts, tmp_path, reference):
    """The real thing: ``accelerate launch`` with two CPU processes (about a minute on a busy machine)."""
    out = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += [
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
    ]
    args = ["29533", "-m", "safegen", "bench", "i2p", "--prompts", prompts, "--model", tiny_sd_dir]
    args += ["--steps", "1", "--device", "cpu", "--images-per-prompt", "2", "--batch-size", "2", "--out", out]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launch, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert files(out) == reference
    assert json.loads((out / "manifest.json").read_text())["processes"] == 2


def test_python_dash_m_safegen():
    proc = subprocess.run(
        [sys.executable, "-m", "safegen", "bench", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "i2p" in proc.stdout and "attack" in proc.stdout


def test_a_second_writer_is_refused_and_the_first_keeps_its_files(tiny_sd_dir, prompts, tmp_path, capsys):
    """Another process holds a run folder (a run in progress): a second run into it, resumed or not, is one
    line and exit 2, and changes nothing of the first."""
    out = tmp_path / "busy"
    bench(tiny_sd_dir, prompts, out)
    before = files(out)
    code = (
        "import sys, time; from pathlib import Path; from safegen.runs import lock_folder; "
        "lock_folder(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        common = ["--prompts", str(prompts), "--model", str(tiny_sd_dir), "--steps", "1", "--device", "cpu"]
        common += ["--images-per-prompt", "2", "--batch-size", "2"]
        for extra, words in (([], "not empty"), (["--resume"], "another safegen process")):
            assert main(["bench", "i2p", *common, "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and words in err, err
        assert files(out) == before
    finally:
        holder.kill()
        holder.wait()
