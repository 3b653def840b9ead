"""VCE: erase a concept from an autoregressive image model with visual contrast pairs and token-level DPO.

Following VCE (arXiv 2509.16986; our reading, ``docs/methods/vce.md``): contrastive image pairs that differ
only in the concept (stage 1, :mod:`safegen.recipes.vce_pairs`),
then DPO on image tokens with a token-level average and token drop, on a LoRA of the GPT (stage 2, here).

    safegen erase --method vce --concept red --model mini-ar --out runs/vce-red
    safegen erase --method vce --concept nudity --model path/to/llamagen --set beta=10 --out runs/vce-nudity
    accelerate launch --multi_gpu --num_processes 2 -m safegen erase --method vce --concept red --out runs/x

The loss of one micro-batch (B pairs, R retain samples), every pair conditioned on its **unsafe** prompt p:

    a(y | p)  = (1 / |K|) sum_{i in K} log p(y_i | y_<i, p)        token-level average over kept positions K
    L_dpo     = mean_b -log sigmoid(beta ((a_th(y_s) - a_ref(y_s)) - (a_th(y_u) - a_ref(y_u))))
    L_retain  = -mean_r a_th(y_r | p_r),    y_r ~ base model(p_r),  p_r without the concept
    L_chosen  = -mean_b a_th(y_s | p)                              the safe image under the unsafe prompt
    L         = L_dpo + retain_weight * L_retain + rpo_alpha * L_chosen

chosen y_s = the safe image's tokens, rejected y_u = the unsafe image's. With ``adv_steps`` > 0 every pair
is conditioned on its prompt moved by a few attack steps first (AdvUnlearn-style adversarial training,
:mod:`safegen.recipes.vce_adversarial`; off by default). Token drop leaves a random
``token_drop`` share of positions out of K (or, with ``token_drop_mode=corrupt``, replaces that share of
the *input* tokens with random codes and keeps every position). L_chosen is TRL's ``rpo_alpha`` term
(RPO, arXiv 2404.19733): it pulls the whole safe image up, not only its margin over the unsafe one.
L_retain, the NLL of the base model's own samples, is in expectation KL(ref || th) on clean prompts up to
the reference's entropy, a constant. The
reference is the same GPT with its LoRA disabled (:func:`~safegen.recipes.training.adapters_disabled`),
under ``no_grad``; log-probabilities are teacher-forced with dropout and caption dropout off
(:meth:`safegen.ar.ARModel.token_logprobs`).

The recipe is shaped like SC-DPO's: ``setup()`` (model, pairs, LoRA, optimiser, resume state),
``train()`` (the loop of :class:`~safegen.recipes.training.RecipeRun`), ``save()`` (a PEFT adapter
folder, loadable with ``safegen generate --adapter OUT`` or ``peft.PeftModel.from_pretrained``). Every
number is an option of :class:`~safegen.recipes.vce_config.VCEConfig`, whose defaults come from
``benchmarks/sweep_vce.py`` on mini-ar.

``OUT/log.jsonl`` uses TRL's DPO names, one row per step: ``loss``, ``rewards/chosen``
(``beta * (a_th(y_s) - a_ref(y_s))``), ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
``logps/chosen`` (``a_th(y_s)``), ``logps/rejected``, ``nll_loss`` (L_retain), ``learning_rate``,
``grad_norm``, ``epoch``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from safegen.errors import SafegenError
from safegen.options import fingerprint
from safegen.recipes.losses import average_logprob, corrupt_tokens, token_keep_mask, vce_loss
from safegen.recipes.prompts import Progress, StageContext, reusable_stage
from safegen.recipes.training import TRL_DPO_NAMES, RecipeRequest, RecipeRun, adapters_disabled, execute
from safegen.recipes.vce_adversarial import prefix_attack
from safegen.recipes.vce_config import VCEConfig

STAGES = ("pairs", "train", "all")
TRL_NAMES = (*TRL_DPO_NAMES, "nll_loss")
# LoRA target modules per (family, lora_targets), as regular expressions over module names
LORA_TARGETS = {
    ("llamagen", "attn"): r"layers\.\d+\.attention\.(wqkv|wo)",
    ("llamagen", "attn-ff"): r"layers\.\d+\.(attention\.(wqkv|wo)|feed_forward\.(w1|w2|w3))",
    ("janus", "attn"): r"model\.language_model\.layers\.\d+\.self_attn\.[qkvo]_proj",
    ("janus", "attn-ff"): r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]|mlp\.(gate|up|down))_proj",
}


# --------------------------------------------------------------------------- the model
def add_ar_lora(
    model: Any, rank: int, alpha: float, targets: str, seed: int
) -> tuple[Any, list[nn.Parameter]]:
    """Add a LoRA (B = 0, so the model starts as the base) to the GPT's attention (and feed-forward) layers.

    Returns:
        The ``peft.PeftModel`` around the GPT (LlamaGen) or the Janus model, whose layers now carry the
        LoRA in place, and the trainable parameters (fp32 even when the frozen weights are half precision).
    """
    from peft import LoraConfig

    from safegen.adapters import add_peft_lora

    torch.manual_seed(seed)  # the same initial LoRA on every process
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS[model.family, targets]
    )
    peft_model = add_peft_lora(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return peft_model, params


class TokenLogProbs(nn.Module):
    """:meth:`ARModel.token_logprobs` as a module, so that ``accelerate`` can wrap it for data parallelism."""

    def __init__(self, model: Any):
        super().__init__()
        self.parts = nn.ModuleList(model.backbone.modules())  # the parameters DDP keeps in sync
        self.model = model

    def forward(
        self,
        prompts: list[str],
        tokens: torch.Tensor,
        inputs: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
    ):
        return self.model.token_logprobs(prompts, tokens, inputs, shift)  # (B, N)


def move_ar_model(model: Any, device: torch.device) -> None:
    """Move an ARModel's modules (GPT or Janus, text encoder, VQ) to ``device``."""
    parts = list(model.backbone.modules()) + ([model.vq] if isinstance(model.vq, nn.Module) else [])
    for part in parts:
        part.to(device)
    model.device = device


# --------------------------------------------------------------------------- the recipe
class VCERecipe:
    """VCE as a recipe: ``setup()``, ``train()``, ``save()``; see :func:`run_vce`."""

    def __init__(self, cfg: VCEConfig, request: RecipeRequest):
        self.cfg, self.request = cfg, request
        self.run = RecipeRun("vce", "VCE", cfg, request, STAGES, "ar")
        self.concept, self.mini, self.out = self.run.target, self.run.mini, self.run.out
        self.result = self.run.result

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        from safegen.recipes.vce_pairs import check_pair_inputs

        check_pair_inputs(self.cfg, self.concept, self.mini)  # every input before a model loads or a file
        self.run.check_out()
        if self.cfg.pairs_dir:
            folder = Path(self.cfg.pairs_dir).expanduser()
            reusable_stage(folder, True, "pair set", self.concept.name, "")
        self.acc = self.run.start(self.request.device)
        self.is_main = self.result["main"] = self.run.is_main
        self._setup_model()
        self.run.collective(self._write_manifest, main_only=True)
        self._setup_pairs()
        if self.run.trains:
            self.peft, self.params = add_ar_lora(
                self.model, self.cfg.lora_rank, self.cfg.lora_alpha, self.cfg.lora_targets, self.cfg.seed
            )
            self._setup_optimizer()

    def _setup_model(self) -> None:
        from safegen.bundled import mini_tuned_notice
        from safegen.loader import load_model

        dtype = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[self.cfg.mixed_precision]
        self.model = load_model(self.request.model, device="cpu", dtype=dtype)
        mini_tuned_notice(self.model.name, "erase", "vce")
        if self.model.kind != "ar":
            raise SafegenError(
                f"VCE erases concepts from autoregressive models; {self.request.model} is a diffusion model "
                "(use --method scdpo)."
            )
        move_ar_model(self.model, self.acc.device)
        for part in self.model.backbone.modules():
            part.requires_grad_(False)

    def _fingerprint(self) -> str:
        options = fingerprint(self.cfg, "prompts", "pairs")
        extra = f"{self.concept.name}|{self.model.source}|{options}|{self.run.plan.digest()}"
        return hashlib.sha256(extra.encode()).hexdigest()[:16]

    def _setup_pairs(self) -> None:
        from safegen.recipes.vce_pairs import TokenPairs, build_pair_part, merge_pair_parts

        given = bool(self.cfg.pairs_dir)
        folder = Path(self.cfg.pairs_dir).expanduser() if given else self.out / "pairs"
        name = self.concept.name
        reusable = lambda: reusable_stage(folder, given, "pair set", name, self._fingerprint())  # noqa: E731
        record, reused = reusable(), True
        if record is None:
            start, acc = time.time(), self.acc
            ctx = StageContext(
                self.cfg,
                self.concept,
                self.mini,
                self.model,
                self.run.plan,
                acc.process_index,
                acc.num_processes,
                self.request.progress,
            )
            self.run.collective(lambda: [p.unlink() for p in folder.glob("part-*")], main_only=True)
            self.run.collective(lambda: build_pair_part(ctx, folder))
            self.run.collective(
                lambda: merge_pair_parts(ctx, folder, self._fingerprint(), start), main_only=True
            )
            record, reused = reusable(), False
        self.data = TokenPairs(folder, self.model)
        self.result["stages"]["pairs"] = {"folder": str(folder), "reused": reused, **record}

    def _setup_optimizer(self) -> None:
        opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.policy, self.opt = self.acc.prepare(TokenLogProbs(self.model), opt)
        self.run.resume_from(self.peft, self.opt)

    # ----------------------------------------------------------------- train
    def train(self) -> None:
        """The loop of :meth:`RecipeRun.train` over :meth:`_micro_step`."""
        self.result["stages"]["train"] = self.run.train(
            self._micro_step,
            TRL_NAMES,
            self.policy,
            self.peft,
            self.opt,
            self.params,
            len(self.data),
            self._record,
        )

    def _micro_step(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One micro-batch: the VCE loss and the (8,) statistics named by ``TRL_NAMES``."""
        cfg = self.cfg
        prompts, chosen, rejected = self.data.batch(cfg.batch_size, gen)  # (B,), (B, N), (B, N)
        targets, b = torch.cat([chosen, rejected]), len(prompts)  # (2B, N)
        keep = inputs = None
        if cfg.token_drop > 0 and cfg.token_drop_mode == "mask":
            keep = token_keep_mask(2 * b, targets.shape[1], cfg.token_drop, gen)  # (2B, N), shared with ref
        elif cfg.token_drop > 0:
            inputs = corrupt_tokens(targets, cfg.token_drop, self.model.vq.codebook_size, gen)  # (2B, N)
        retain = self.data.retain_batch(cfg.retain_batch_size, gen) if cfg.retain_weight > 0 else None
        shift = None
        if cfg.adv_steps > 0:  # vce_adversarial.py (A1)-(A4): the pairs under an attacked prompt
            shift = prefix_attack(self.model, prompts, targets, inputs, keep, eps=cfg.adv_eps,
                                  steps=cfg.adv_steps, lr=cfg.adv_lr)  # fmt: skip
        with torch.no_grad(), adapters_disabled(self.peft):  # the reference: LoRA off, restored in finally
            ref = self.model.token_logprobs(prompts * 2, targets, inputs, shift)  # (2B, N)
        all_prompts, all_targets, all_inputs = prompts * 2, targets, inputs
        if retain is not None:  # one forward for pairs and retain samples: one DDP pass per backward
            all_prompts, all_targets = all_prompts + retain[0], torch.cat([targets, retain[1]])
            all_inputs = None if inputs is None else torch.cat([inputs, retain[1]])
        logp = self.policy(all_prompts, all_targets, all_inputs, shift)  # (2B + R, N)
        avg, ref_avg = average_logprob(logp[: 2 * b], keep), average_logprob(ref, keep)  # (2B,) each
        out = vce_loss(avg[:b], avg[b:], ref_avg[:b], ref_avg[b:], cfg.beta)
        nll = (
            -average_logprob(logp[2 * b :]).mean()
            if retain is not None
            else torch.zeros((), device=avg.device)
        )
        loss = out.loss + cfg.retain_weight * nll
        if cfg.rpo_alpha > 0:
            loss = loss - cfg.rpo_alpha * avg[:b].mean()  # L_chosen
        rc, rr = out.rewards_chosen, out.rewards_rejected
        stats = [
            loss.detach(),
            rc.mean(),
            rr.mean(),
            (rc > rr).float().mean(),
            (rc - rr).mean(),
            avg[:b].detach().mean(),
            avg[b:].detach().mean(),
            nll.detach(),
        ]
        return loss, torch.stack(stats).float().cpu()

    # ----------------------------------------------------------------- save
    def _record(self, step: int) -> dict[str, Any]:
        model = self.model
        return {
            "method": "vce",
            "concept": self.concept.name,
            "steps": step,
            "base_model": {"name": model.name, "source": model.source, "family": model.family},
            "config": dataclasses.asdict(self.cfg),
            "labels": self.cfg.pair_filter,  # the detector that chose the pairs (none: the prompts)
        }

    def save(self) -> dict[str, Any]:
        """Write the final LoRA (PEFT format) in ``out``; finish the manifest."""
        from safegen.adapters import save_peft_adapter

        if self.run.trains and self.is_main:
            steps = self.result["stages"]["train"]["steps"]  # what was trained, not what was asked
            save_peft_adapter(self.peft, self.out, self._record(steps))
            self.result["adapter"] = str(self.out)
        self.run.collective(lambda: self._write_manifest(done=True), main_only=True)
        return self.result

    def _write_manifest(self, done: bool = False) -> None:
        self.run.write_manifest(
            self.model, self.result, done, stage=self.request.stage, family=self.model.family
        )


def run_vce(
    concept: Any,
    model: str = "mini-ar",
    config: VCEConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    stage: str = "all",
    device: str = "auto",
    progress: Progress | None = None,
    merge: bool = False,
) -> dict[str, Any]:
    """Erase ``concept`` from an autoregressive ``model`` with VCE; the five-line main of the recipe.

    Returns:
        ``{"out", "concept", "main", "stages": {"pairs": {... n_pairs}, "train": {... final metrics}},
        "adapter": folder}`` (complete on the main process).

    Raises:
        SafegenError: bad concept for the model, a diffusion model, bad pair options, non-empty ``out``
            without ``resume``, changed settings on resume, a NaN loss, missing weights.
    """
    if merge:
        raise SafegenError("VCE writes a PEFT adapter; load it with --adapter (merging is not available).")
    request = RecipeRequest(concept, model, out, resume, False, stage, device, progress)
    return execute(VCERecipe(config or VCEConfig(), request))
