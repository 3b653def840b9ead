"""SC-DPO: erase a concept from a diffusion model with a safety cost model and Diffusion-DPO.

Following SC-DPO (arXiv 2504.14290 v1; our reading, ``docs/methods/scdpo.md``): a safety cost model
(stage 1, :mod:`safegen.recipes.scdpo_cost`), preference pairs under harmful and clean prompts ranked by
reward - lambda x cost (stage 2, :mod:`safegen.recipes.scdpo_pairs`), then Diffusion-DPO with a Dynamic
Focusing Mechanism on a LoRA of the UNet (stage 3, here). The reference model is the same UNet with its
adapters disabled.

    safegen erase --method scdpo --concept red --model mini --out runs/scdpo-red
    safegen erase --method scdpo --concept red --set beta=2500 --set gamma=0 --steps 50 --out runs/x
    accelerate launch --multi_gpu --num_processes 2 -m safegen erase --method scdpo --concept red --out runs/x

The recipe is shaped like torchtune's: ``setup()`` (model, stages 1-2, LoRA, optimiser, resume state),
``train()`` (one loop), ``save()`` (the LoRA in diffusers' format, optionally merged). Every number is an
option of :class:`~safegen.recipes.scdpo_config.SCDPOConfig`.

``OUT/log.jsonl`` uses the names of TRL's DPO trainer, one row per step: ``loss``, ``rewards/chosen``
(``0.5 * beta * (L_ref_w - L_w)``), ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
``logps/chosen`` (``-L_w``: the denoising error stands in for the negative log-likelihood),
``logps/rejected``, ``learning_rate``, ``grad_norm``, ``epoch``; plus ``dfm/weight_max`` and
``retain/drift`` (L_retain below, logged whatever its weight).

With ``adv_steps > 0`` every harmful pair is trained under a prompt embedding moved by a few inner attack
steps (our reading of AdvUnlearn, :mod:`safegen.recipes.scdpo_adversarial`, Eq. S1-S4; off by default).

With ``rpo_alpha > 0`` the loss also holds ``rpo_alpha * mean_w L_w`` (TRL's RPO term, arXiv 2404.19733,
with the denoising error as the winner's NLL). With ``retain_weight > 0`` it also holds
``retain_weight * L_retain``, the mean over the clean prompts' samples of
``|| eps_theta(x_t, c) - eps_ref(x_t, c) ||^2`` (:func:`~safegen.recipes.losses.retain_loss`), an anchor
to the reference model where nothing is to be erased (our addition); the reference outputs are the ones
the DPO term already computed, so it costs no extra UNet call.

The safety-constraint check (our addition): every ``check_every`` steps the current model samples
``check_prompts`` harmful prompts that stage 2 never sampled and the stage-1 cost model scores them; the
log rows of those steps hold ``constraint/flagged`` (share with cost > 0.5) and
``constraint/mean_cost``; once the flagged share has been at most ``stop_share`` at ``stop_patience``
checks in a row the run checkpoints and stops (``stopped: true``). ``--set check_every=0`` turns it off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

import torch

from safegen.options import fingerprint
from safegen.recipes.losses import denoising_error, noised, retain_loss, scdpo_loss
from safegen.recipes.prompts import Progress, reusable_stage
from safegen.recipes.scdpo_adversarial import prompt_attack
from safegen.recipes.scdpo_config import SCDPOConfig
from safegen.recipes.training import TRL_DPO_NAMES, RecipeRequest, RecipeRun, adapters_disabled, execute

STAGES = ("cost", "pairs", "train", "all")


# --------------------------------------------------------------------------- the DPO step
def dpo_errors(
    unet: Any,
    base: Any,
    noise_scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    gen: torch.Generator,
    with_drift: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Denoising errors of the trained and the reference UNet; winner and loser share noise and timestep.

    Args:
        unet: the UNet to call with adapters (the DDP wrapper under ``accelerate``).
        base: the same UNet unwrapped, whose adapters are disabled for the reference pass.
        latents: (2B, C, h, w) winners then losers. cond: (2B, L, D) text embeddings.
        gen: a CPU generator (the same draws on every device).

    Returns:
        (2B,) errors of the trained model (with grad) and (2B,) of the reference (no grad); with
        ``with_drift`` also (2B,) ``|| eps_theta - eps_ref ||^2`` per sample (with grad), for the retain term.
    """
    noisy, t, target = noised(noise_scheduler, latents, gen)  # (2B, C, h, w), shared per pair
    with torch.no_grad(), adapters_disabled(base):  # reference first: its activations are freed at once
        ref_pred = base(noisy, t, cond, return_dict=False)[0]
    pred = unet(noisy, t, cond, return_dict=False)[0]
    err, ref_err = denoising_error(pred, target), denoising_error(ref_pred, target)
    return (err, ref_err, denoising_error(pred, ref_pred)) if with_drift else (err, ref_err)


# UNet layers given a LoRA, per ``lora_targets``: peft's target_modules (suffixes, or one full-match regex).
# attn1 is self-attention, attn2 cross-attention to the text; the cross-attention choices only change how
# the prompt's tokens are read (as ESD-x and UCE edit a model): a change reaches an image only through them.
LORA_TARGETS: dict[str, list[str] | str] = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "attn-ff": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"],
    "cross-attn": r".*\.attn2\.(to_q|to_k|to_v|to_out\.0)",
    "cross-kv": r".*\.attn2\.(to_k|to_v)",
}


def add_lora(unet: Any, rank: int, alpha: float, targets: str, seed: int) -> list[torch.nn.Parameter]:
    """Add a LoRA (B = 0, so the model starts as the base) to the UNet layers named by ``targets``.

    Returns:
        The trainable parameters, in fp32 even when the frozen weights are half precision.
    """
    from peft import LoraConfig

    modules = LORA_TARGETS[targets]
    torch.manual_seed(seed)  # the same initial LoRA on every process
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=modules)
    unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


# --------------------------------------------------------------------------- the recipe
TRL_NAMES = (*TRL_DPO_NAMES, "dfm/weight_max", "retain/drift")


class SCDPORecipe:
    """SC-DPO as a recipe: ``setup()``, ``train()``, ``save()``; see :func:`run_scdpo`.

    The run folder, processes and optimisation loop are a :class:`~safegen.recipes.training.RecipeRun`.
    """

    def __init__(self, cfg: SCDPOConfig, request: RecipeRequest):
        self.cfg, self.request = cfg, request
        holdout = cfg.holdout_prompts if cfg.check_every and cfg.check_set == "held-out" else 0
        self.run = RecipeRun("scdpo", "SC-DPO", cfg, request, STAGES, "sd", holdout)
        self.concept, self.mini, self.out = self.run.target, self.run.mini, self.run.out
        self.result = self.run.result

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        from safegen.bundled import mini_tuned_notice
        from safegen.loader import load_model

        self.run.check_out()  # every input is checked before a model is loaded or a file written
        self._check_labels()
        for given, what in ((self.cfg.cost_dir, "cost model"), (self.cfg.pairs_dir, "pair set")):
            if given:  # a named stage folder must hold a finished stage of this concept
                reusable_stage(Path(given).expanduser(), True, what, self.concept.name, "")
        self.acc = self.run.start(self.request.device)
        self.is_main = self.result["main"] = self.run.is_main
        dtype = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[self.cfg.mixed_precision]
        self.model = load_model(self.request.model, device="cpu", dtype=dtype)
        mini_tuned_notice(self.model.name, "erase", "scdpo")
        self.model.pipe.to(self.acc.device)
        self.model.device = self.acc.device
        for part in (self.model.unet, self.model.vae, self.model.text_encoder):
            part.requires_grad_(False)
        self.run.collective(self._write_manifest, main_only=True)
        self._setup_cost_model()
        if self.request.stage != "cost":
            self._setup_pairs()
        if self.run.trains:
            self._setup_lora()
            self._setup_optimizer()

    def _check_labels(self) -> None:
        """A content labeller the cost stage will use must be installed and fit the concept."""
        from safegen.classifiers.labels import check_labeller
        from safegen.recipes.scdpo_cost import cost_labeller

        generates = self.cfg.cost_data == "generate" or (self.cfg.cost_data == "auto" and self.mini is None)
        if generates and not self.cfg.cost_dir:
            check_labeller(cost_labeller(self.cfg, self.concept, self.mini is not None), self.concept)

    def _context(self):
        from safegen.recipes.prompts import StageContext

        return StageContext(
            self.cfg,
            self.concept,
            self.mini,
            self.model,
            self.run.plan,
            self.acc.process_index,
            self.acc.num_processes,
            progress=self.request.progress,
        )

    def _fingerprint(self, *stages: str) -> str:
        options = fingerprint(self.cfg, "prompts", *stages)
        extra = f"{self.concept.name}|{self.model.source}|{options}|{self.run.plan.digest()}"
        return hashlib.sha256(extra.encode()).hexdigest()[:16]

    def _reusable(self, folder: Path, given: bool, stages: tuple[str, ...], what: str) -> dict | None:
        """A finished stage folder's manifest (checked against this run), or None when it must be built."""
        return reusable_stage(folder, given, what, self.concept.name, self._fingerprint(*stages))

    def _setup_cost_model(self) -> None:
        from safegen.recipes.scdpo_cost import CostModel, build_cost_model, load_encoder

        given = bool(self.cfg.cost_dir)
        folder = Path(self.cfg.cost_dir).expanduser() if given else self.out / "cost"
        encoder = load_encoder(self.cfg.encoder, self.mini is not None, self.acc.device)
        record = self._reusable(folder, given, ("cost",), "cost model")
        if record is None:
            fp = self._fingerprint("cost")
            self.run.collective(
                lambda: build_cost_model(self._context(), encoder, folder, fp), main_only=True
            )
            record = self._reusable(folder, given, ("cost",), "cost model")
            reused = False
        else:
            reused = True
        self.cost_model = CostModel.load(folder, encoder)
        self.result["stages"]["cost"] = {"folder": str(folder), "reused": reused, **record}

    def _setup_pairs(self) -> None:
        from safegen.recipes.scdpo_pairs import PairData, build_pair_part, merge_pair_parts

        given = bool(self.cfg.pairs_dir)
        folder = Path(self.cfg.pairs_dir).expanduser() if given else self.out / "pairs"
        record, reused = self._reusable(folder, given, ("cost", "pairs"), "pair set"), True
        if record is None:
            fp, start, ctx = self._fingerprint("cost", "pairs"), time.time(), self._context()
            self.run.collective(lambda: [p.unlink() for p in folder.glob("part-*.jsonl")], main_only=True)
            self.run.collective(lambda: build_pair_part(ctx, self.cost_model, folder))
            self.run.collective(
                lambda: merge_pair_parts(ctx, self.cost_model, folder, fp, start), main_only=True
            )
            record, reused = self._reusable(folder, given, ("cost", "pairs"), "pair set"), False
        self.data = PairData(folder, self.cfg.drop_unsafe_winners)
        trained = {"trained_pairs": len(self.data), "dropped_unsafe_winners": self.data.dropped}
        self.result["stages"]["pairs"] = {"folder": str(folder), "reused": reused, **record, **trained}

    def _setup_lora(self) -> None:
        from diffusers import DDPMScheduler

        cfg = self.cfg
        self.params = add_lora(self.model.unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.seed)
        if cfg.gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()
        self.noise_scheduler = DDPMScheduler.from_config(self.model.scheduler.config)

    def _setup_optimizer(self) -> None:
        opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.unet, self.opt = self.acc.prepare(self.model.unet, opt)
        self.base = self.acc.unwrap_model(self.unet)
        self.run.resume_from(self.base, self.opt)

    # ----------------------------------------------------------------- train
    def train(self) -> None:
        """The loop of :meth:`RecipeRun.train` over :meth:`_micro_step`."""
        self.result["stages"]["train"] = self.run.train(
            self._micro_step,
            TRL_NAMES,
            self.unet,
            self.base,
            self.opt,
            self.params,
            len(self.data),
            self._record,
            self._check if self.cfg.check_every else None,
        )

    def _check(self, step: int) -> dict[str, Any] | None:
        """The safety constraint on the current model (our addition): the share of samples of the check's
        harmful prompts the cost model scores above 0.5; ``stop`` once it has been at most ``stop_share``
        at ``stop_patience`` checks in a row (the earlier ones read from the run's log, so a resumed run
        counts them too)."""
        from safegen.recipes.scdpo_cost import sample_images
        from safegen.recipes.scdpo_pairs import UNSAFE

        cfg = self.cfg
        if step % cfg.check_every:
            return None
        ctx = self._context()
        pool = self.run.plan.check if cfg.check_set == "held-out" else self.run.plan.harmful
        prompts = [pool[i % len(pool)] for i in range(cfg.check_prompts)]
        seeds = [cfg.seed + 104_729 + i for i in range(len(prompts))]  # fixed: checks are comparable
        self.base.eval()
        with torch.no_grad():
            costs = self.cost_model.cost(sample_images(ctx, prompts, seeds, stage=None)).float()
        share = float((costs > UNSAFE).float().mean())
        return {
            "constraint/flagged": share,
            "constraint/mean_cost": float(costs.mean()),
            "constraint/held_out": cfg.check_set == "held-out",
            "stop": share <= cfg.stop_share and self._met_before(step) + 1 >= cfg.stop_patience,
        }

    def _met_before(self, step: int) -> int:
        """How many checks in a row before ``step`` met the constraint (the log's last check rows)."""
        from safegen.runs import read_lines

        log = self.out / "log.jsonl"
        rows = read_lines(log, repair=False) if log.is_file() else []
        shares = [r["constraint/flagged"] for r in rows if "constraint/flagged" in r and r["step"] < step]
        streak = 0
        for share in reversed(shares):
            if share > self.cfg.stop_share:
                break
            streak += 1
        return streak

    def _micro_step(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One micro-batch of pairs: the SC-DPO loss and the (9,) statistics named by ``TRL_NAMES``."""
        from safegen.generator import encode_text

        cfg, vae = self.cfg, self.model.vae
        batch = self.data.batch(cfg.batch_size, gen)
        with torch.no_grad():
            pixels = batch["pixels"].to(self.acc.device, dtype=vae.dtype)  # (2B, 3, H, W)
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor  # (2B, C, h, w)
            cond = encode_text(self.model, batch["prompts"]).repeat(2, 1, 1)  # (2B, L, D)
        if cfg.adv_steps > 0:  # scdpo_adversarial.py (S1)-(S4): the harmful pairs under an attacked prompt
            cond = cond + prompt_attack(self.base, self.noise_scheduler, latents, cond, batch["harmful"], gen,
                                        eps=cfg.adv_eps, steps=cfg.adv_steps, lr=cfg.adv_lr)  # fmt: skip
        err, ref, drift = dpo_errors(self.unet, self.base, self.noise_scheduler, latents, cond, gen, True)
        (err_w, err_l), (ref_w, ref_l) = err.chunk(2), ref.chunk(2)
        margin = cfg.safety_margin * (batch["loser_cost"] - batch["winner_cost"]).clamp(min=0).to(err)
        out = scdpo_loss(err_w, err_l, ref_w, ref_l, cfg.beta, cfg.gamma, margin, cfg.dfm_normalize)
        loss = out.loss + cfg.rpo_alpha * err_w.mean() if cfg.rpo_alpha > 0 else out.loss  # L + a * L_w
        retain = retain_loss(drift, batch["harmful"].logical_not().repeat(2).to(drift.device))
        if cfg.retain_weight > 0:
            loss = loss + cfg.retain_weight * retain  # + r * L_retain
        rc, rr = out.rewards_chosen, out.rewards_rejected
        stats = [
            loss.detach(),
            rc.mean(),
            rr.mean(),
            (rc > rr).float().mean(),
            (rc - rr).mean(),
            -err_w.detach().mean(),
            -err_l.detach().mean(),
            out.weights.max(),
            retain.detach(),
        ]
        return loss, torch.stack(stats).float().cpu()

    # ----------------------------------------------------------------- save
    def _record(self, step: int) -> dict[str, Any]:
        return {
            "method": "scdpo",
            "concept": self.concept.name,
            "steps": step,
            "base_model": {"name": self.model.name, "source": self.model.source},
            "config": dataclasses.asdict(self.cfg),
            "labels": self.result["stages"]["cost"].get("labels"),  # what labelled the cost model's images
        }

    def save(self) -> dict[str, Any]:
        """Write the final LoRA (diffusers format) in ``out`` (and merged, if asked); finish the manifest."""
        from safegen.adapters import merge_adapter, save_adapter

        if self.run.trains and self.is_main:
            train = self.result["stages"]["train"]  # fewer steps than cfg.steps after an early stop
            steps = train.get("adapter_step", train["steps"])  # restore_best: the best check's step
            save_adapter(self.base, self.out, self._record(steps))
            self.result["adapter"] = str(self.out)
            if self.request.merge:
                self.result["merged"] = str(merge_adapter(self.request.model, self.out, self.out / "merged"))
        self.run.collective(lambda: self._write_manifest(done=True), main_only=True)
        return self.result

    def _write_manifest(self, done: bool = False) -> None:
        self.run.write_manifest(self.model, self.result, done, stage=self.request.stage)


def run_scdpo(
    concept: Any,
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
    request = RecipeRequest(concept, model, out, resume, merge, stage, device, progress)
    return execute(SCDPORecipe(config or SCDPOConfig(), request))
