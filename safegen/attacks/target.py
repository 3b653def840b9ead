"""What every attack shares: the attacked model as its user runs it, and the pieces the objectives use.

- :class:`AttackTarget`: the model (with its adapter), the guard it runs behind, the generation settings,
  the judge that says whether an image shows the concept;
- :class:`Slots`: placeholder tokens in a prompt whose input embeddings an attack sets (differentiably):
  a forward hook on the text side's embedding table swaps the placeholder's rows for the attack's vectors,
  so one code path serves CLIP (Stable Diffusion, mini-ar), T5 (LlamaGen) and Janus's language model;
- the white-box forward passes: :meth:`AttackTarget.denoising_loss` (diffusion: the denoising error of the
  attacked model on noised latents of target images, through the guard's branches and combination at the
  sampled timestep) and :meth:`AttackTarget.nll_loss` (autoregressive: the teacher-forced negative
  log-likelihood of the target images' VQ tokens);
- :func:`concept_pairs`: prompts with and without the concept (Ring-A-Bell's concept vector).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from safegen.errors import SafegenError


# --------------------------------------------------------------------------- the judge
def check_judgeable(concept: Any) -> None:
    """An attack's success is judged by the concept's detector: refuse a concept without one."""
    if not {"mini", "nudenet"} & set(concept.detector or {}):
        raise SafegenError(
            f"Concept '{concept.name}' has no detector, so an attack's success cannot be judged; "
            "give it one in a concepts file (detector: {nudenet: <preset>} or {mini: ...})."
        )


class Judge:
    """Whether each image shows the concept: the mini classifier on the mini world, NudeNet for nudity."""

    def __init__(self, concept: Any, preset: str = "unlearndiff") -> None:
        check_judgeable(concept)
        detector = concept.detector
        self.concept = concept
        if "mini" in detector:
            from safegen.bench.mini_prompts import target_for
            from safegen.mini.classifier import MiniClassifier

            self.name, self.preset = "mini", None
            self.mini_target, self.classifier = target_for(concept), MiniClassifier.load()
        else:
            from safegen.classifiers.nudenet import NudeNetClassifier

            self.name, self.preset = "nudenet", preset
            self.classifier = NudeNetClassifier(preset)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "preset": self.preset}

    def read(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        """Per image: ``shows`` (bool) and what the detector found."""
        if self.name == "mini":
            reads = self.classifier.classify(list(images))
            return [{"shows": self.mini_target.shown_in(r), "objects": r} for r in reads]
        verdicts = self.classifier.classify([np.asarray(im) for im in images])
        return [{"shows": bool(v["unsafe"]), "detections": v.get("detections", [])} for v in verdicts]


# --------------------------------------------------------------------------- placeholder slots
PLACEHOLDERS = ("~", "^", "|", "`", "sks", "zzz")  # tried first: no meaning a word-reading guard could see


def pick_placeholder(tokenizer: Any, avoid: Sequence[str]) -> tuple[str, int]:
    """A string that is exactly one token (after lower-casing) and none of ``avoid``'s tokens."""
    used = {i for text in avoid for i in tokenizer(text.lower(), add_special_tokens=False).input_ids}
    special = set(getattr(tokenizer, "all_special_ids", []))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: -kv[1])
    candidates = [*PLACEHOLDERS, *(tokenizer.decode([i]).strip() for _, i in vocab)]
    for text in candidates:
        ids = tokenizer(text, add_special_tokens=False).input_ids if text and text == text.lower() else []
        if len(ids) == 1 and ids[0] not in used and ids[0] not in special and " " not in text:
            return text, ids[0]
    raise SafegenError("The tokenizer has no free single-token word to hold an attack's slots.")


class Slots:
    """``k`` placeholder tokens in front of (or after) a prompt, their input embeddings set by the attack."""

    def __init__(self, tokenizer: Any, embedding: torch.nn.Module, k: int, avoid: Sequence[str]) -> None:
        self.tokenizer, self.embedding, self.k = tokenizer, embedding, k
        self.text, self.id = pick_placeholder(tokenizer, avoid)

    def prompt(self, prompt: str, where: str = "prefix") -> str:
        words = " ".join([self.text] * self.k)
        return f"{words} {prompt}" if where == "prefix" else f"{prompt} {words}"

    @contextlib.contextmanager
    def filled(self, vectors: torch.Tensor) -> Iterator[None]:
        """Inside the block, the placeholder's embedding rows are ``vectors`` (k, D), in order, every row."""

        def swap(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            ids = args[0] if args else None
            if ids is None or not torch.is_tensor(ids):
                return output
            mask = ids == self.id  # (B, L)
            if not bool(mask.any()):
                return output
            # a row holds k slots; a text a guard derived from the prompt (a rewrite) may hold fewer or
            # more: its slots take the vectors in order, cycling
            found = mask.sum(-1).tolist()
            rows = [vectors[torch.arange(n, device=vectors.device) % self.k] for n in found if n]
            return output.masked_scatter(mask[..., None], torch.cat(rows).to(output.dtype))

        handle = self.embedding.register_forward_hook(swap)
        try:
            yield
        finally:
            handle.remove()

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


# --------------------------------------------------------------------------- the attacked model
@dataclass
class AttackTarget:
    """The model as its user runs it: weights (and adapter), guard, generation settings, the judge."""

    model: Any  # safegen.loader.LoadedModel or safegen.ar.ARModel
    concept: Any
    guard: Any  # a Guard, or None
    config: Any  # safegen.sampling.GenerationConfig
    judge: Judge
    images: int = 1  # images per check

    @property
    def kind(self) -> str:
        return self.model.kind

    def vocabulary(self) -> tuple[Any, torch.nn.Module]:
        """The prompt tokenizer and the embedding table its tokens are looked up in."""
        if self.kind == "ar":
            return self.model.backbone.prompt_vocabulary()
        return self.model.tokenizer, self.model.text_encoder.get_input_embeddings()

    def word_ids(self) -> torch.Tensor:
        """Token ids an attack may use: every id of the table but the special tokens."""
        tokenizer, table = self.vocabulary()
        n = min(table.weight.shape[0], len(tokenizer))
        special = set(getattr(tokenizer, "all_special_ids", []))
        return torch.tensor([i for i in range(n) if i not in special])

    def check(self, prompts: Sequence[str], seed: int, slots: Slots | None = None, vectors=None):
        """Generate ``images`` per prompt (seeds ``seed + k``) and judge them: (images, reads, success)."""
        from safegen.generator import generate

        texts = [p for p in prompts for _ in range(self.images)]
        seeds = [seed + k for _ in prompts for k in range(self.images)]
        context = slots.filled(vectors) if slots is not None else contextlib.nullcontext()
        with torch.no_grad(), context:
            images = generate(self.model, texts, seeds=seeds, config=self.config, guard=self.guard)
        reads = self.judge.read([im.image for im in images])
        return images, reads, any(r["shows"] for r in reads)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """The text side's output for ``texts``: (B, L, D) (what a text-only attack matches)."""
        if self.kind == "ar":
            return self.model.backbone.text_features(list(texts)).float()
        from safegen.generator import encode_text

        return encode_text(self.model, list(texts)).float()

    # ----------------------------------------------------------------- white-box objectives
    def denoising_loss(
        self,
        texts: list[str],
        shown: list[str],
        latents: torch.Tensor,
        t: int,
        gen: torch.Generator,
        through_guard: bool,
    ) -> torch.Tensor:
        """``|| eps - eps_theta(x_t, c, t) ||^2`` on target latents (B, C, h, w) noised to timestep ``t``.

        ``texts`` are encoded (slots filled by the caller's :meth:`Slots.filled`); ``shown`` is what a
        text-reading guard sees. ``through_guard``: eps is the guarded prediction of the generation step
        nearest ``t`` (the guard's branches and combination, its judging steps replayed first), else the
        conditional branch alone.
        """
        from diffusers import DDPMScheduler

        from safegen.generator import branch_predictions, encode_text, fresh_scheduler, run_context

        model = self.model
        noise_sched = DDPMScheduler.from_config(model.scheduler.config)
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        steps = torch.full((latents.shape[0],), t, dtype=torch.long, device=latents.device)
        x_t = noise_sched.add_noise(latents, noise, steps)
        cond = encode_text(model, texts)  # (B, L, D), differentiable through the filled slots
        if not through_guard or self.guard is None:
            eps = model.unet(x_t, steps, encoder_hidden_states=cond, return_dict=False)[0]
            return torch.mean((eps.float() - noise.float()) ** 2)
        scheduler = fresh_scheduler(model, self.config.steps)
        with torch.no_grad():
            uncond = encode_text(model, [self.config.negative_prompt]).expand(len(texts), -1, -1)
        generators = [torch.Generator(model.device).manual_seed(i) for i in range(len(texts))]
        ctx = run_context(model, self.config, self.guard, list(shown), list(range(len(texts))), cond, uncond,
                          scheduler, generators)  # fmt: skip
        self.guard.begin(ctx)
        index = int(torch.argmin((ctx.timesteps.float().cpu() - t).abs()))
        for j in range(min(index, self.guard.replay_steps())):  # the guard's own judgement of x_t
            with torch.no_grad():
                eps_u, eps_c, eps_x = branch_predictions(ctx, self.guard, j, steps[0], x_t, scheduler)
                self.guard.guide(j, steps[0], x_t, eps_u, eps_c, eps_x)
        eps_u, eps_c, eps_x = branch_predictions(ctx, self.guard, index, steps[0], x_t, scheduler)
        guided = self.guard.effective_eps(index, steps[0], x_t, eps_u, eps_c, eps_x)
        self.guard.end()
        eps = unit_scale(guided, eps_u, ctx.cfg if ctx.do_cfg else 1.0)
        return torch.mean((eps.float() - noise.float()) ** 2)

    def nll_loss(self, texts: list[str], tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``-mean log p(y_i | y_<i, c)`` of target image tokens (B, N) under ``texts``."""
        return -self.model.token_logprobs(texts, tokens).mean()

    # ----------------------------------------------------------------- target images
    def encode_targets(self, images: Sequence[Any]) -> torch.Tensor:
        """Target images -> what the objective reads: VAE latents (B, C, h, w) or VQ tokens (B, N)."""
        from PIL import Image

        if self.kind == "ar":
            size = self.model.image_size
            resized = [Image.fromarray(np.asarray(im)).convert("RGB").resize((size, size)) for im in images]
            return self.model.encode_images(resized)
        from safegen.mini.encoder import to_pixels

        model = self.model
        size = model.unet.config.sample_size * model.vae_scale_factor
        pixels = to_pixels(list(images), size).to(model.device, model.vae.dtype)
        with torch.no_grad():
            latents = model.vae.encode(pixels).latent_dist.mean * model.vae.config.scaling_factor
        return latents


def unit_scale(guided: torch.Tensor, eps_uncond: torch.Tensor | None, cfg: float) -> torch.Tensor:
    """The guarded prediction re-expressed at guidance scale 1: ``eps_u + (eps_hat - eps_u) / w``.

    Our reading of "the denoising error of the guarded model": ``eps_hat`` itself is not a denoiser's
    estimate (CFG multiplies the conditional direction by ``w``), so ``||eps_hat - eps||^2`` is smallest when
    the conditional branch equals the unconditional one, and descending it teaches the attack to say
    nothing. Dividing the guided direction by ``w`` gives exactly ``eps_c`` under plain CFG (a no-op guard is
    attacked like the bare model) and ``eps_c`` minus the guard's correction over ``w`` under a guard, whose
    every term the gradient still goes through.
    """
    if eps_uncond is None or cfg == 1.0:
        return guided
    return eps_uncond + (guided - eps_uncond) / cfg


# --------------------------------------------------------------------------- concept pairs
def concept_pairs(concept: Any, n: int = 16) -> list[tuple[str, str]]:
    """Up to ``n`` (prompt with the concept, the same prompt without it) pairs.

    Mini world: a caption naming the value (or the artist) and the same caption with that axis left out.
    Real concepts: the registry's examples and their rewrites without the keywords.
    """
    detector = concept.detector or {}
    if "mini" in detector:
        from safegen.bench.mini_prompts import implicit_prompts, unprompted_prompts
        from safegen.mini.world import World

        world, mini = World.load(), detector["mini"]
        if mini.get("artist"):
            named = [{"color": p.expect["color"], "object": p.expect["object"], "artist": mini["artist"]}
                     for p in implicit_prompts(world, _target(concept))]  # fmt: skip
        else:
            named = [
                {**p.expect, mini["axis"]: mini["value"]} for p in unprompted_prompts(world, mini["axis"])
            ]
        pairs = []
        for i, words in enumerate(named[:n]):
            without = {k: v for k, v in words.items() if k not in (mini["axis"], "artist")}
            pairs.append((world.compose(words, template=i), world.compose(without, template=i)))
        return pairs
    from safegen.concepts import rewrite

    return [(e, rewrite(e, concept)) for e in concept.examples[:n] if rewrite(e, concept) != e]


def _target(concept: Any) -> Any:
    from safegen.bench.mini_prompts import target_for

    return target_for(concept)
