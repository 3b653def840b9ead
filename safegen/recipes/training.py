"""What the erasure recipes share at training time: the reference model and the run.

- :func:`adapters_disabled`: the DPO reference is the same model with its LoRA switched off;
- :class:`RecipeRun`: the run folder (a :class:`safegen.runs.RunFolder`: manifest, ``config.yaml``,
  ``log.jsonl``, ``checkpoints/``, the rules of ``--out`` and ``--resume``), the processes of
  ``accelerate launch`` and the optimisation loop (warm-up, gradient accumulation and clipping, NaN stop,
  TRL-named metrics, checkpoints, progress).

Used by :mod:`safegen.recipes.scdpo` and :mod:`safegen.recipes.vce`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from safegen.errors import SafegenError, unknown
from safegen.recipes.prompt_plan import plan_prompts
from safegen.recipes.prompts import Progress, resolve_target
from safegen.runs import (
    MANIFEST,
    RunFolder,
    default_out_dir,
    git_commit,
    lock_folder,
    read_json,
    read_lines,
    release_folder,
    versions,
    write_json,
    write_text,
)

log = logging.getLogger("safegen")
NOISY_KEYS = frozenset({"steps", "save_every", "keep_checkpoints", "log_every"})  # may change on --resume

# the metrics TRL's DPO trainer logs, in its names; each recipe adds its own after them
TRL_DPO_NAMES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


# --------------------------------------------------------------------------- the reference model
@contextmanager
def adapters_disabled(model: Any) -> Iterator[None]:
    """The reference model: the same model with its LoRA switched off; switched back on in ``finally``.

    ``model``: a diffusers model with a peft adapter (``add_adapter``) or a ``peft.PeftModel``.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        off, on = model.base_model.disable_adapter_layers, model.base_model.enable_adapter_layers
    else:
        off, on = model.disable_adapters, model.enable_adapters
    off()
    try:
        yield
    finally:
        on()


def learning_rate(cfg: Any, step: int) -> float:
    """The lr of 0-based ``step``: linear warm-up over ``warmup_steps``, then ``cfg.lr`` held
    (``lr_schedule`` constant, the default and the only one for recipes without the option) or
    ``lr * (1 + cos(pi * p)) / 2`` with ``p`` the share of the post-warm-up steps done (cosine: reaches
    0 at ``cfg.steps``)."""
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if getattr(cfg, "lr_schedule", "constant") == "cosine" and step >= cfg.warmup_steps:
        done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        lr = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
    return lr


# --------------------------------------------------------------------------- the run
@dataclass
class RecipeRequest:
    """What a run of an erasure recipe is asked to do, beside its options (``safegen erase``'s flags)."""

    concept: Any  # a registry name or a Concept
    model: str
    out: str | Path | None = None
    resume: bool = False
    merge: bool = False
    stage: str = "all"
    device: str = "auto"
    progress: Progress | None = None


class RecipeRun:
    """A fine-tuning run's target, folder, processes and loop, composed by a recipe.

    Args:
        method: ``scdpo`` or ``vce`` (in manifests and adapter records). label: its display name.
        cfg: the recipe's options dataclass (needs ``seed``, ``steps``, ``lr``, ``warmup_steps``,
            ``grad_accum``, ``max_grad_norm``, ``beta``, ``mixed_precision``, ``save_every``,
            ``keep_checkpoints``, ``log_every``).
        request: what to erase from which model, where (``out`` None: ``runs/<method>-<concept>-<time>``).
        stages: the recipe's stages (``request.stage`` must be one).
        kind: the kind of model the recipe trains (``sd`` or ``ar``), checked before anything is loaded.
        holdout: prompts to hold out of training for a safety check (:func:`plan_prompts`).

    Raises:
        SafegenError: an unknown stage, a concept the model cannot draw, prompts that cannot make a run
            (:mod:`safegen.recipes.prompt_plan`): all before a model is loaded or a file written.
    """

    def __init__(
        self,
        method: str,
        label: str,
        cfg: Any,
        request: RecipeRequest,
        stages: tuple[str, ...],
        kind: str,
        holdout: int = 0,
    ):
        from safegen.loader import model_kind

        if request.stage not in stages:
            raise unknown(f"{label} stage", request.stage, stages)
        found = model_kind(request.model)
        if found is not None and found != kind:
            plural = {"sd": "diffusion models", "ar": "autoregressive models"}
            single = {"sd": "a diffusion model", "ar": "an autoregressive model"}
            other = {"sd": "scdpo", "ar": "vce"}[found]
            raise SafegenError(
                f"{label} erases concepts from {plural[kind]}; {request.model} is {single[found]} "
                f"(use --method {other})."
            )
        self.target, self.mini = resolve_target(request.concept, request.model)
        self.plan = plan_prompts(cfg, self.target, self.mini, holdout)
        for note in self.plan.report["notes"]:
            log.warning("%s: %s.", label, note)
        self.method, self.label, self.cfg, self.request = method, label, cfg, request
        self.concept, self.model_name = self.target.name, request.model
        self.resume, self.progress, self.out_given = request.resume, request.progress, request.out is not None
        name = f"{method}-{self.concept}"
        self.out = Path(request.out) if request.out else default_out_dir(name, root="runs")
        self.trains = request.stage in ("train", "all")
        self.result: dict[str, Any] = {
            "out": str(self.out),
            "concept": self.concept,
            "prompts": self.plan.report,
            "stages": {},
        }
        self.acc: Any = None
        self.is_main = True
        self.start_step, self.last_metrics, self.resumed_stopped = 0, {}, False

    # ----------------------------------------------------------------- folder rules
    def check_out(self) -> None:
        """``--out`` must be empty, or hold a run of this method, concept and settings with ``--resume``."""
        if self.out_given is False and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SafegenError(
                "Under accelerate launch, pass --out (every process must write to one folder)."
            )
        config = dataclasses.asdict(self.cfg)
        folder = RunFolder(self.out)
        if folder.check({"config": config}, self.resume, what=f"{self.label} run", ignore=NOISY_KEYS):
            saved = read_json(self.out / MANIFEST)
            if saved.get("method", self.method) != self.method:
                raise SafegenError(f"--resume: {self.out} holds a {saved['method']} run, not {self.method}.")
            if saved.get("concept") != self.concept:
                raise SafegenError(
                    f"--resume: {self.out} erases {saved.get('concept')!r}, not {self.concept!r}."
                )
            from safegen.adapters import latest_checkpoint

            last = latest_checkpoint(self.out / "checkpoints")
            trained = int(json.loads((last / "state.json").read_text())["step"]) if last is not None else 0
            if self.cfg.steps < trained:
                raise SafegenError(
                    f"--resume: the run in {self.out} has trained {trained} steps; --steps {self.cfg.steps} "
                    f"is fewer (use --steps {trained} or more to go on; checkpoints/ holds earlier steps)."
                )

    def start(self, device: str) -> Any:
        """The Accelerator (one per process under ``accelerate launch``); a missing device is an error."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, is_initialized

        from safegen.loader import resolve_device

        cpu = resolve_device(device).type == "cpu"
        if is_initialized():
            state = AcceleratorState()
            if state.mixed_precision != self.cfg.mixed_precision or (cpu and state.device.type != "cpu"):
                # a second run in this process with another precision or device: accelerate keeps one state
                AcceleratorState._reset_state()
        self.acc = Accelerator(
            cpu=cpu, mixed_precision=self.cfg.mixed_precision, gradient_accumulation_steps=self.cfg.grad_accum
        )
        self.is_main = self.acc.is_main_process
        return self.acc

    def write_manifest(self, model: Any, result: dict[str, Any], done: bool = False, **extra: Any) -> None:
        """``manifest.json`` (settings, versions, git, the result so far) and a re-runnable config.yaml."""
        lock_folder(self.out)  # one writer per run folder (taken again by the same process: a no-op)
        config = dataclasses.asdict(self.cfg)
        record = {
            "method": self.method,
            "concept": self.concept,
            "status": "done" if done else "running",
            "model": {"name": model.name, "source": model.source},
            **extra,
            "processes": self.acc.num_processes,
            "config": config,
            "versions": versions(),
            "git": git_commit(),
            **{k: v for k, v in result.items() if k != "concept"},
        }
        write_json(self.out / MANIFEST, record)
        command = f"safegen erase --method {self.method} --concept {self.concept} --model {self.model_name}"
        header = f"# {command} --config {self.out / 'config.yaml'} --out NEW_OUT\n"
        write_text(self.out / "config.yaml", header + yaml.safe_dump(config, sort_keys=False))

    # ----------------------------------------------------------------- processes
    def any_failed(self, failed: bool) -> bool:
        """Whether any process reports a failure (a collective: every process must call it)."""
        if self.acc.num_processes == 1:
            return failed
        flag = torch.tensor([1.0 if failed else 0.0], device=self.acc.device)
        return bool(self.acc.reduce(flag, reduction="sum").item() > 0)

    def collective(self, fn: Callable[[], Any], main_only: bool = False) -> Any:
        """Run ``fn`` on every process (or the main one); if any fails, every process raises."""
        error, value = None, None
        if self.is_main or not main_only:
            try:
                value = fn()
            except Exception as exc:  # re-raised below, after the other processes have heard of it
                error = exc
        if self.any_failed(error is not None):
            raise error if error is not None else SafegenError("Another process failed; see its error above.")
        return value

    # ----------------------------------------------------------------- checkpoints
    def resume_from(self, adapter: Any, opt: Any) -> int:
        """With ``--resume``: load the newest checkpoint and cut ``log.jsonl`` back to it; return its step."""
        from safegen.adapters import latest_checkpoint, load_checkpoint

        last = latest_checkpoint(self.out / "checkpoints") if self.resume else None
        if last is not None:
            self.start_step = load_checkpoint(last, adapter, opt)
        log = self.out / "log.jsonl"
        rows = read_lines(log, repair=False) if log.is_file() else []  # a torn last line is dropped
        rows = [r for r in rows if r["step"] <= self.start_step]  # drop rows past the checkpoint
        self.last_metrics = rows[-1] if rows else {}
        # a run the constraint check ended stays ended: --resume does not train past its stop
        self.resumed_stopped = bool(rows and rows[-1]["step"] == self.start_step and rows[-1].get("stopped"))
        self.acc.wait_for_everyone()  # every process has read the log before the main one cuts it
        if self.is_main and log.is_file():
            log.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return self.start_step

    def save_checkpoint(
        self, step: int, adapter: Any, opt: Any, record: dict[str, Any], folder: str = "checkpoints"
    ) -> None:
        """A checkpoint in ``out/<folder>`` (``best``: the best check's, only the newest kept)."""
        from safegen.adapters import save_checkpoint

        if self.is_main:
            keep = 1 if folder == "best" else self.cfg.keep_checkpoints
            save_checkpoint(self.out / folder, adapter, opt, step, record, keep)
        self.acc.wait_for_everyone()

    def best_check(self) -> tuple[float, int] | None:
        """(flagged share, step) of the best check so far whose weights ``best/`` holds (the latest of the
        lowest share), read from the log (a resumed run counts its earlier checks)."""
        from safegen.adapters import latest_checkpoint

        log, saved = self.out / "log.jsonl", latest_checkpoint(self.out / "best")
        rows = read_lines(log, repair=False) if log.is_file() and saved is not None else []
        best = None
        for row in rows:  # the log is cut back to the resumed step already
            flagged = row.get("constraint/flagged")
            if flagged is not None and (best is None or flagged <= best[0]):
                best = (flagged, row["step"])
        held = best is not None and saved is not None and saved.name == f"step-{best[1]:07d}"
        return best if held else None

    def restore_best(self, best: tuple[float, int] | None, step: int, adapter: Any, opt: Any) -> int:
        """With ``restore_best``: load the best check's weights when they are not the last step's; return
        the step whose weights the adapter now holds."""
        from safegen.adapters import latest_checkpoint, load_checkpoint

        if not getattr(self.cfg, "restore_best", False) or best is None or best[1] == step:
            return step
        return load_checkpoint(latest_checkpoint(self.out / "best"), adapter, opt)

    def check_finite(self, loss: torch.Tensor, step: int, lr: float) -> None:
        """Stop every process before the update when any has a NaN or infinite loss."""
        from safegen.adapters import latest_checkpoint

        if self.any_failed(not bool(torch.isfinite(loss))):
            last = latest_checkpoint(self.out / "checkpoints")
            where = f"the last checkpoint is {last} (continue with --resume)" if last else "no checkpoint yet"
            raise SafegenError(
                f"The {self.label} loss is NaN or infinite at step {step + 1}; stopped before the update "
                f"(lr {lr:g}, beta {self.cfg.beta:g}): lower lr or beta; {where}."
            )

    # ----------------------------------------------------------------- the loop
    def train(
        self,
        micro_step: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
        names: Sequence[str],
        module: Any,
        adapter: Any,
        opt: Any,
        params: list[torch.nn.Parameter],
        n_data: int,
        record: Callable[[int], dict[str, Any]],
        check: Callable[[int], dict[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """Optimise from the resumed step to ``cfg.steps``; return the training stage's record.

        Args:
            micro_step: ``gen -> (loss, stats)``: one micro-batch drawn with ``gen`` (a CPU generator seeded
                from the seed, step, micro-step and process); ``stats`` (len(names),) for the log.
            names: the metric names of ``stats`` (TRL's: ``loss``, ``rewards/chosen``, ...).
            module: what gradients are accumulated on (the DDP wrapper under ``accelerate``).
            adapter: what checkpoints save (the LoRA's module). opt, params: the optimiser, its parameters.
            n_data: training pairs, for ``epoch``. record: ``step -> adapter.json record``.
            check: ``step -> None`` or a dict of ``constraint/...`` metrics logged with the step; when it
                holds ``"stop": True`` the run checkpoints and ends there (an early stop).
        """
        cfg, acc = self.cfg, self.acc
        start = time.time() - self.last_metrics.get("seconds", 0.0)  # training seconds add up over resumes
        module.train()
        step, stopped, checks = self.start_step, self.resumed_stopped, []
        keep_best = getattr(cfg, "restore_best", False)
        best = self.best_check() if keep_best else None
        while step < cfg.steps and not stopped:
            lr = learning_rate(cfg, step)
            for group in opt.param_groups:
                group["lr"] = lr
            sums, grad_norm = torch.zeros(len(names)), None
            for micro in range(cfg.grad_accum):
                seed = (cfg.seed * 1_000_003 + step * 1_009 + micro) * 1_013 + acc.process_index
                with acc.accumulate(module):
                    loss, stats = micro_step(torch.Generator().manual_seed(seed))
                    self.check_finite(loss, step, lr)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        grad_norm = float(acc.clip_grad_norm_(params, cfg.max_grad_norm))
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                sums += stats
            step += 1
            means = acc.reduce((sums / cfg.grad_accum).to(acc.device), reduction="mean").cpu().tolist()
            seen = step * cfg.batch_size * cfg.grad_accum * acc.num_processes
            row = {
                "step": step,
                **dict(zip(names, means, strict=True)),
                "learning_rate": lr,
                "grad_norm": grad_norm,
                "epoch": seen / max(1, n_data),
                "seconds": round(time.time() - start, 2),
            }
            found = check(step) if check is not None else None
            if found is not None:
                stopped = bool(found.pop("stop", False))
                row |= found | {"stopped": stopped}
                checks.append({"step": step, **found})
                flagged = found.get("constraint/flagged")
                if keep_best and flagged is not None and (best is None or flagged <= best[0]):
                    best = (flagged, step)
                    self.save_checkpoint(step, adapter, opt, record(step), "best")
                module.train()
            self.last_metrics = row
            if self.is_main and (step % cfg.log_every == 0 or step == cfg.steps or found is not None):
                with (self.out / "log.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")
            if step % cfg.save_every == 0 or step == cfg.steps or stopped:
                self.save_checkpoint(step, adapter, opt, record(step))
            if self.progress is not None and self.is_main:
                self.progress("training", step, cfg.steps)
        return {
            "steps": step,
            "adapter_step": self.restore_best(best, step, adapter, opt),  # the weights the adapter holds
            "resumed_from": self.start_step,
            "stopped_early": stopped,
            "checks": checks,
            "seconds": round(time.time() - start, 2),
            "final": self.last_metrics,
        }


def execute(recipe: Any) -> dict[str, Any]:
    """The main of a recipe: ``setup()``, ``train()`` when the stage asks for it, ``save()``.

    A run that fails leaves nothing behind when nothing of it is worth keeping (no finished stage, no
    checkpoint): the files it wrote are removed, and the folder too if the run made it. Otherwise the folder
    stays for ``--resume``, and the error says so.
    """
    run = recipe.run
    existed = run.out.exists()
    fresh = not run.resume and not (existed and any(run.out.iterdir()))
    try:
        recipe.setup()
        if run.trains:
            recipe.train()
        result = recipe.save()
        release_folder(run.out)  # the folder is free for another process (a --resume, a bench)
        acc = getattr(run, "acc", None)
        if acc is not None and acc.num_processes > 1:
            acc.end_training()  # close the process group before exit (an open one can abort a rank)
        return result
    except BaseException as exc:
        if not fresh or not run.is_main:
            raise
        if not has_progress(run.out):
            discard(run.out, keep_folder=existed)  # only what this process wrote: it holds the lock
            raise
        if isinstance(exc, SafegenError):
            kept = f"Finished stages are kept in {run.out}: continue with --resume."
            raise SafegenError(f"{exc} {kept}") from None
        raise


def has_progress(out: Path) -> bool:
    """Whether a run folder holds something worth resuming: a finished stage or a checkpoint."""
    stages = [p for p in out.glob("*/manifest.json")] if out.is_dir() else []
    checkpoints = list((out / "checkpoints").glob("*/state.json")) if (out / "checkpoints").is_dir() else []
    return bool(stages or checkpoints)


def discard(out: Path, keep_folder: bool) -> None:
    """Remove what a failed run wrote in ``out`` (the folder itself unless it was there before)."""
    import shutil

    from safegen.runs import holds_lock

    if not out.is_dir() or ((out / ".lock").exists() and not holds_lock(out)):
        return  # another process's run (it holds the lock), or nothing written
    release_folder(out)
    if keep_folder:
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        shutil.rmtree(out, ignore_errors=True)
