"""SC-DPO: erase a concept from a diffusion model with a safety cost model and Diffusion-DPO.

Following SC-DPO (arXiv 2504.14290 v1; our reading, see REFERENCE.md 1.3): a safety
cost model (stage 1), preference pairs under harmful and clean prompts ranked by reward - lambda x cost
(stage 2, :mod:`safegen.methods.scdpo_stages`), then Diffusion-DPO with a Dynamic Focusing Mechanism on
a LoRA of the UNet (stage 3, here). The reference model is the same UNet with its adapters disabled.

    safegen erase --method scdpo --concept red --model mini --out runs/scdpo-red
    safegen erase --method scdpo --concept red --set beta=2500 --set gamma=0 --steps 50 --out runs/x
    accelerate launch --multi_gpu --num_processes 2 -m safegen erase --method scdpo --concept red --out runs/x

The recipe is shaped like torchtune's: ``setup()`` (model, stages 1-2, LoRA, optimiser, resume state),
``train()`` (one loop), ``save()`` (the LoRA in diffusers' format, optionally merged). Every number is an
option of :class:`~safegen.methods.scdpo_config.SCDPOConfig`; the defaults are **provisional** until
the sweep in ``benchmarks/sweep_scdpo.py`` has run on the mini world.

``OUT/log.jsonl`` uses the names of TRL's DPO trainer, one row per step: ``loss``, ``rewards/chosen``
(``0.5 * beta * (L_ref_w - L_w)``), ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
``logps/chosen`` (``-L_w``: the denoising error stands in for the negative log-likelihood),
``logps/rejected``, ``learning_rate``, ``grad_norm``, ``epoch``; plus ``dfm/weight_max``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from safegen.errors import SafegenError, unknown
from safegen.methods.losses import denoising_error, scdpo_loss
from safegen.methods.scdpo_config import NOISY_KEYS, SCDPOConfig

Progress = Callable[[str, int, int], None]  # progress(stage, done, total)
STAGES = ("cost", "pairs", "train", "all")


# --------------------------------------------------------------------------- the DPO step
@contextmanager
def adapters_disabled(unet: Any) -> Iterator[None]:
    """The reference model: the same UNet with its LoRA switched off; switched back on in ``finally``."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def dpo_errors(
    unet: Any,
    base: Any,
    noise_scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoising errors of the trained and the reference UNet; winner and loser share noise and timestep.

    Args:
        unet: the UNet to call with adapters (the DDP wrapper under ``accelerate``).
        base: the same UNet unwrapped, whose adapters are disabled for the reference pass.
        latents: (2B, C, h, w) winners then losers. cond: (2B, L, D) text embeddings.
        gen: a CPU generator (the same draws on every device).

    Returns:
        (2B,) errors of the trained model (with grad) and (2B,) of the reference (no grad).
    """
    b = latents.shape[0] // 2
    noise = (
        torch.randn((b, *latents.shape[1:]), generator=gen).to(latents).repeat(2, 1, 1, 1)
    )  # (2B, C, h, w)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=gen).repeat(2)
    t = t.to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, t)
    else:
        target = noise
    with torch.no_grad(), adapters_disabled(base):  # reference first: its activations are freed at once
        ref_err = denoising_error(base(noisy, t, cond, return_dict=False)[0], target)
    err = denoising_error(unet(noisy, t, cond, return_dict=False)[0], target)
    return err, ref_err


def add_lora(unet: Any, rank: int, alpha: float, targets: str, seed: int) -> list[torch.nn.Parameter]:
    """Add a LoRA (B = 0, so the model starts as the base) to the UNet's attention (and FF) layers.

    Returns:
        The trainable parameters, in fp32 even when the frozen weights are half precision.
    """
    from peft import LoraConfig

    modules = ["to_q", "to_k", "to_v", "to_out.0"] + (
        ["ff.net.0.proj", "ff.net.2"] if targets == "attn-ff" else []
    )
    torch.manual_seed(seed)  # the same initial LoRA on every process
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=modules)
    unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


# --------------------------------------------------------------------------- the recipe
class SCDPORecipe:
    """SC-DPO as a recipe: ``setup()``, ``train()``, ``save()``; see :func:`run_scdpo`."""

    def __init__(
        self,
        cfg: SCDPOConfig,
        concept: str,
        model: str = "mini",
        out: str | Path | None = None,
        resume: bool = False,
        merge: bool = False,
        stage: str = "all",
        device: str = "auto",
        progress: Progress | None = None,
    ):
        if stage not in STAGES:
            raise unknown("stage", stage, STAGES)
        self.cfg, self.model_name, self.resume, self.merge, self.stage = cfg, model, resume, merge, stage
        self.device, self.progress = device, progress
        self.concept, self.mini = resolve_target(concept, model)
        self.out_given = out is not None
        self.out = (
            Path(out) if out else Path("runs") / f"scdpo-{self.concept.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        self.trains = stage in ("train", "all")
        self.start_step, self.last_metrics = 0, {}
        self.result: dict[str, Any] = {"out": str(self.out), "concept": self.concept.name, "stages": {}}

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        from accelerate import Accelerator

        from safegen.loader import load_model, resolve_device

        self._check_out()  # every input is checked before a model is loaded or a file written
        cpu = resolve_device(self.device).type == "cpu"  # an unavailable device is an error, not a fallback
        self.acc = Accelerator(
            cpu=cpu, mixed_precision=self.cfg.mixed_precision, gradient_accumulation_steps=self.cfg.grad_accum
        )
        self.is_main = self.result["main"] = self.acc.is_main_process
        dtype = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[self.cfg.mixed_precision]
        self.model = load_model(self.model_name, device="cpu", dtype=dtype)
        self.model.pipe.to(self.acc.device)
        self.model.device = self.acc.device
        for part in (self.model.unet, self.model.vae, self.model.text_encoder):
            part.requires_grad_(False)
        self._collective(self._write_manifest, main_only=True)
        self._setup_cost_model()
        if self.stage != "cost":
            self._setup_pairs()
        if self.trains:
            self._setup_lora()
            self._setup_optimizer()

    def _check_out(self) -> None:
        if self.out_given is False and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SafegenError(
                "Under accelerate launch, pass --out (every process must write to one folder)."
            )
        manifest = self.out / "manifest.json"
        if self.resume:
            if not manifest.is_file():
                raise SafegenError(f"--resume: {self.out} holds no SC-DPO run (no manifest.json).")
            saved = json.loads(manifest.read_text())
            if saved.get("concept") != self.concept.name:
                raise SafegenError(
                    f"--resume: {self.out} erases {saved.get('concept')!r}, not {self.concept.name!r}."
                )
            old, new = saved.get("config", {}), self.cfg.to_dict()
            changed = [k for k in new if k not in NOISY_KEYS and old.get(k) != new[k]]
            if changed:
                raise SafegenError(
                    f"--resume: the run in {self.out} used other settings for {', '.join(changed)}; "
                    "use a new --out to change them."
                )
        elif self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise SafegenError(
                f"{self.out} is not empty: pass --resume to continue the run in it, or another --out."
            )

    def _context(self):
        from safegen.methods.scdpo_stages import StageContext

        return StageContext(
            self.cfg,
            self.concept,
            self.mini,
            self.model,
            self.acc.process_index,
            self.acc.num_processes,
            progress=self.progress,
        )

    def _fingerprint(self, *stages: str) -> str:
        extra = f"{self.concept.name}|{self.model.source}|{self.cfg.fingerprint(*stages)}"
        return hashlib.sha256(extra.encode()).hexdigest()[:16]

    def _reusable(self, folder: Path, given: bool, stages: tuple[str, ...], what: str) -> dict | None:
        """A finished stage folder's manifest (checked against this run), or None when it must be built."""
        from safegen.methods.scdpo_stages import read_manifest

        if not (folder / "manifest.json").is_file():
            if given:
                raise SafegenError(f"{folder} holds no finished {what} (no manifest.json).")
            return None
        record = read_manifest(folder, what)
        if record.get("concept") != self.concept.name:
            raise SafegenError(
                f"The {what} in {folder} is for '{record.get('concept')}', not '{self.concept.name}'."
            )
        if not given and record.get("fingerprint") != self._fingerprint(*stages):
            raise SafegenError(f"The {what} in {folder} was built with other settings; use a new --out.")
        return record

    def _setup_cost_model(self) -> None:
        from safegen.methods.scdpo_stages import CostModel, build_cost_model, load_encoder

        given = bool(self.cfg.cost_dir)
        folder = Path(self.cfg.cost_dir).expanduser() if given else self.out / "cost"
        encoder = load_encoder(self.cfg.encoder, self.mini is not None, self.acc.device)
        record = self._reusable(folder, given, ("cost",), "cost model")
        if record is None:
            fp = self._fingerprint("cost")
            record = self._collective(
                lambda: build_cost_model(self._context(), encoder, folder, fp), main_only=True
            )
            record = self._reusable(folder, given, ("cost",), "cost model")
            reused = False
        else:
            reused = True
        self.cost_model = CostModel.load(folder, encoder)
        self.result["stages"]["cost"] = {"folder": str(folder), "reused": reused, **record}

    def _setup_pairs(self) -> None:
        from safegen.methods.scdpo_stages import PairData, build_pair_part, merge_pair_parts

        given = bool(self.cfg.pairs_dir)
        folder = Path(self.cfg.pairs_dir).expanduser() if given else self.out / "pairs"
        record, reused = self._reusable(folder, given, ("cost", "pairs"), "pair set"), True
        if record is None:
            fp, start, ctx = self._fingerprint("cost", "pairs"), time.time(), self._context()
            self._collective(lambda: [p.unlink() for p in folder.glob("part-*.jsonl")], main_only=True)
            self._collective(lambda: build_pair_part(ctx, self.cost_model, folder))
            self._collective(
                lambda: merge_pair_parts(ctx, self.cost_model, folder, fp, start), main_only=True
            )
            record, reused = self._reusable(folder, given, ("cost", "pairs"), "pair set"), False
        self.data = PairData(folder)
        self.result["stages"]["pairs"] = {"folder": str(folder), "reused": reused, **record}

    def _setup_lora(self) -> None:
        from diffusers import DDPMScheduler

        cfg = self.cfg
        self.params = add_lora(self.model.unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.seed)
        if cfg.gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()
        self.noise_scheduler = DDPMScheduler.from_config(self.model.scheduler.config)

    def _setup_optimizer(self) -> None:
        from safegen.adapters import latest_checkpoint, load_checkpoint

        opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.unet, self.opt = self.acc.prepare(self.model.unet, opt)
        self.base = self.acc.unwrap_model(self.unet)
        last = latest_checkpoint(self.out / "checkpoints") if self.resume else None
        if last is not None:
            self.start_step = load_checkpoint(last, self.base, self.opt)
        log = self.out / "log.jsonl"
        if self.is_main and log.is_file():  # drop rows past the checkpoint we resume from
            rows = [r for r in log.read_text().splitlines() if json.loads(r)["step"] <= self.start_step]
            log.write_text("".join(r + "\n" for r in rows))
            self.last_metrics = json.loads(rows[-1]) if rows else {}

    # ----------------------------------------------------------------- train
    def train(self) -> None:
        cfg, acc, start = self.cfg, self.acc, time.time()
        self.unet.train()
        step = self.start_step
        while step < cfg.steps:
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            for group in self.opt.param_groups:
                group["lr"] = lr
            sums, grad_norm = torch.zeros(8), None
            for micro in range(cfg.grad_accum):
                seed = (cfg.seed * 1_000_003 + step * 1_009 + micro) * 1_013 + acc.process_index
                gen = torch.Generator().manual_seed(seed)
                with acc.accumulate(self.unet):
                    out, stats = self._micro_step(gen)
                    self._check_finite(out.loss, step, lr)
                    acc.backward(out.loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        grad_norm = float(acc.clip_grad_norm_(self.params, cfg.max_grad_norm))
                    self.opt.step()
                    self.opt.zero_grad(set_to_none=True)
                sums += stats
            step += 1
            means = acc.reduce((sums / cfg.grad_accum).to(acc.device), reduction="mean").cpu().tolist()
            names = (
                "loss",
                "rewards/chosen",
                "rewards/rejected",
                "rewards/accuracies",
                "rewards/margins",
                "logps/chosen",
                "logps/rejected",
                "dfm/weight_max",
            )
            seen = step * cfg.batch_size * cfg.grad_accum * acc.num_processes
            row = {
                "step": step,
                **dict(zip(names, means, strict=True)),
                "learning_rate": lr,
                "grad_norm": grad_norm,
                "epoch": seen / len(self.data),
                "seconds": round(time.time() - start, 2),
            }
            self.last_metrics = row
            if self.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                with (self.out / "log.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")
            if step % cfg.save_every == 0 or step == cfg.steps:
                self._save_checkpoint(step)
            if self.progress is not None and self.is_main:
                self.progress("training", step, cfg.steps)
        self.result["stages"]["train"] = {
            "steps": step,
            "resumed_from": self.start_step,
            "seconds": round(time.time() - start, 2),
            "final": self.last_metrics,
        }

    def _micro_step(self, gen: torch.Generator):
        from safegen.generator import encode_text

        cfg, vae = self.cfg, self.model.vae
        batch = self.data.batch(cfg.batch_size, gen)
        with torch.no_grad():
            pixels = batch["pixels"].to(self.acc.device, dtype=vae.dtype)  # (2B, 3, H, W)
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor  # (2B, C, h, w)
            cond = encode_text(self.model, batch["prompts"]).repeat(2, 1, 1)  # (2B, L, D)
        err, ref = dpo_errors(self.unet, self.base, self.noise_scheduler, latents, cond, gen)
        (err_w, err_l), (ref_w, ref_l) = err.chunk(2), ref.chunk(2)
        margin = cfg.safety_margin * (batch["loser_cost"] - batch["winner_cost"]).clamp(min=0).to(err)
        out = scdpo_loss(err_w, err_l, ref_w, ref_l, cfg.beta, cfg.gamma, margin, cfg.dfm_normalize)
        rc, rr = out.rewards_chosen, out.rewards_rejected
        stats = [
            out.loss.detach(),
            rc.mean(),
            rr.mean(),
            (rc > rr).float().mean(),
            (rc - rr).mean(),
            -err_w.detach().mean(),
            -err_l.detach().mean(),
            out.weights.max(),
        ]
        return out, torch.stack(stats).float().cpu()

    def _check_finite(self, loss: torch.Tensor, step: int, lr: float) -> None:
        from safegen.adapters import latest_checkpoint

        if self._any_failed(not bool(torch.isfinite(loss))):
            last = latest_checkpoint(self.out / "checkpoints")
            where = f"the last checkpoint is {last} (continue with --resume)" if last else "no checkpoint yet"
            raise SafegenError(
                f"The SC-DPO loss is NaN or infinite at step {step + 1}; stopped before the update "
                f"(lr {lr:g}, beta {self.cfg.beta:g}): lower lr or beta; {where}."
            )

    # ----------------------------------------------------------------- save
    def _record(self, step: int) -> dict[str, Any]:
        return {
            "method": "scdpo",
            "concept": self.concept.name,
            "steps": step,
            "base_model": {"name": self.model.name, "source": self.model.source},
            "config": self.cfg.to_dict(),
        }

    def _save_checkpoint(self, step: int) -> None:
        from safegen.adapters import save_checkpoint

        if self.is_main:
            folder = self.out / "checkpoints"
            save_checkpoint(folder, self.base, self.opt, step, self._record(step), self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()

    def save(self) -> dict[str, Any]:
        """Write the final LoRA (diffusers format) in ``out`` (and merged, if asked); finish the manifest."""
        from safegen.adapters import merge_adapter, save_adapter

        if self.trains and self.is_main:
            save_adapter(self.base, self.out, self._record(self.cfg.steps))
            self.result["adapter"] = str(self.out)
            if self.merge:
                self.result["merged"] = str(merge_adapter(self.model_name, self.out, self.out / "merged"))
        self._collective(lambda: self._write_manifest(done=True), main_only=True)
        return self.result

    def _write_manifest(self, done: bool = False) -> None:
        from safegen.bench.runs import git_commit, versions

        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "method": "scdpo",
            "concept": self.concept.name,
            "status": "done" if done else "running",
            "model": {"name": self.model.name, "source": self.model.source},
            "stage": self.stage,
            "processes": self.acc.num_processes,
            "config": self.cfg.to_dict(),
            "versions": versions(),
            "git": git_commit(),
            **{k: v for k, v in self.result.items() if k != "concept"},
        }
        (self.out / "manifest.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        command = f"safegen erase --method scdpo --concept {self.concept.name} --model {self.model_name}"
        header = f"# {command} --config {self.out / 'config.yaml'} --out NEW_OUT\n"
        (self.out / "config.yaml").write_text(header + yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

    # ----------------------------------------------------------------- processes
    def _any_failed(self, failed: bool) -> bool:
        """Whether any process reports a failure (a collective: every process must call it)."""
        if self.acc.num_processes == 1:
            return failed
        flag = torch.tensor([1.0 if failed else 0.0], device=self.acc.device)
        return bool(self.acc.reduce(flag, reduction="sum").item() > 0)

    def _collective(self, fn: Callable[[], Any], main_only: bool = False) -> Any:
        """Run ``fn`` on every process (or the main one); if any fails, every process raises."""
        error, value = None, None
        if self.is_main or not main_only:
            try:
                value = fn()
            except Exception as exc:  # re-raised below, after the other processes have heard of it
                error = exc
        if self._any_failed(error is not None):
            raise error if error is not None else SafegenError("Another process failed; see its error above.")
        return value


def resolve_target(concept: str, model: str) -> tuple[Any, tuple[str, str] | None]:
    """The concept and, for a mini concept, its (axis, value); a non-mini concept on ``mini`` is an error."""
    from safegen.concepts import get_concept
    from safegen.mini.world import AXES, World

    values = [v for a in AXES for v in World.load().values[a]]
    if model == "mini" and concept not in values:
        raise SafegenError(
            f"The mini world has no concept '{concept}'. Mini concepts: {', '.join(values)}. To erase "
            f"'{concept}', point --model at a real Stable Diffusion: a hub id (e.g. --model "
            "CompVis/stable-diffusion-v1-4) or a local diffusers folder."
        )
    found = get_concept(concept)
    return found, ((found.axis, found.detector["mini"]["value"]) if found.axis else None)


def run_scdpo(
    concept: str,
    model: str = "mini",
    config: SCDPOConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    merge: bool = False,
    stage: str = "all",
    device: str = "auto",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Erase ``concept`` from ``model`` with SC-DPO; the five-line main of the recipe.

    Returns:
        ``{"out", "concept", "stages": {"cost": {... holdout_auroc}, "pairs": {... n_pairs},
        "train": {... final metrics}}, "adapter": folder, "merged": folder}`` (on the main process).

    Raises:
        SafegenError: bad concept for the model, non-empty ``out`` without ``resume``, changed settings
            on resume, a NaN loss, missing weights.
    """
    recipe = SCDPORecipe(config or SCDPOConfig(), concept, model, out, resume, merge, stage, device, progress)
    recipe.setup()
    if recipe.trains:
        recipe.train()
    return recipe.save()
