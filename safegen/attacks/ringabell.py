"""Ring-A-Bell: a black-box attack that needs only the text encoder (Tsai et al., ICLR 2024).

Our reading of the official code (chiayi-hsu/Ring-A-Bell): a concept vector is the mean difference of the
text encoder's outputs between prompts with and without the concept; the target is the attacked prompt's
encoding pushed along it; a genetic search over token sequences looks for a prompt whose encoding is
nearest the target. The attacked model is never queried: only its text encoder (which erasure methods
that edit the UNet or GPT leave as it was), so the result is a text prompt that is then generated::

    c      = mean_i ( enc(p_i with the concept) - enc(p_i without it) )          concept vector  (R1)
    target = enc(prompt) + eta * c                                                                (R2)
    f(s)   = - || enc(s) - target ||^2       s: a sequence of ``length`` tokens, decoded to text   (R3)
    genetic search: keep the ``elite`` fittest, breed the rest by one-point crossover (prob
    ``crossover``) of fitness-ranked parents, mutate each token with prob ``mutation``             (R4)

enc is the whole encoder output (sequence x width, as the official code's 77 x 768); texts are encoded
as a user would type them (decoded tokens, re-tokenized).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from safegen.attacks.target import AttackTarget, concept_pairs
from safegen.options import check_fields, option


@dataclass
class RingABellOptions:
    """Ring-A-Bell's knobs (defaults: the official code's, but for the number of generations)."""

    label: ClassVar[str] = "Ring-A-Bell"

    eta: float = option(3.0, low=0.0, high=100.0, help="how far along the concept vector the target lies")
    length: int = option(16, low=1, high=256, help="tokens of the adversarial prompt")
    population: int = option(200, low=4, high=100_000, help="prompts per generation")
    generations: int = option(3000, low=1, high=1_000_000, help="generations of the search")
    mutation: float = option(0.25, low=0.0, high=1.0, help="probability that a token mutates")
    crossover: float = option(0.5, low=0.0, high=1.0, help="probability of crossover for a child")
    elite: int = option(10, low=1, high=100_000, help="fittest prompts kept as they are")
    pairs: int = option(16, low=1, high=10_000, help="prompt pairs averaged into the concept vector")
    seed: int = option(0, low=0, high=2**31 - 1, help="seed of the search")

    def __post_init__(self) -> None:
        check_fields(self, self.label)


def concept_vector(target: AttackTarget, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """Eq. (R1): mean over pairs of enc(with) - enc(without), (L, D)."""
    with torch.no_grad():
        on = target.text_features([a for a, _ in pairs])
        off = target.text_features([b for _, b in pairs])
    return (on - off).mean(0)


def fitness(features: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Eq. (R3): minus the squared distance of each encoding (P, L, D) to the target (L, D), (P,)."""
    return -((features - goal[None]) ** 2).flatten(1).sum(-1)


def evolve(
    population: torch.Tensor, scores: torch.Tensor, vocab: torch.Tensor, opts: RingABellOptions, gen
) -> torch.Tensor:
    """Eq. (R4): one generation (P, length) -> (P, length) of token ids."""
    order = torch.argsort(scores, descending=True)
    ranked = population[order]
    p = population.shape[0]
    elite = ranked[: min(opts.elite, p)]
    weights = torch.linspace(1.0, 0.1, p)  # fitter parents breed more
    mothers = ranked[torch.multinomial(weights, p - len(elite), replacement=True, generator=gen)]
    fathers = ranked[torch.multinomial(weights, p - len(elite), replacement=True, generator=gen)]
    cut = torch.randint(1, max(2, opts.length), (p - len(elite), 1), generator=gen)
    cross = torch.rand(p - len(elite), 1, generator=gen) < opts.crossover
    positions = torch.arange(opts.length)[None]
    children = torch.where(cross & (positions >= cut), fathers, mothers)
    mutate = torch.rand(children.shape, generator=gen) < opts.mutation
    random_ids = vocab[torch.randint(len(vocab), children.shape, generator=gen)]
    children = torch.where(mutate, random_ids, children)
    return torch.cat([elite, children])


def attack(target: AttackTarget, item: Any, opts: RingABellOptions, progress: Any = None) -> dict:
    """Search a prompt for ``item.prompt`` with the text encoder only; generate it and judge it."""
    start = time.perf_counter()
    tokenizer, _ = target.vocabulary()
    vocab = target.word_ids()
    gen = torch.Generator().manual_seed(opts.seed)
    pairs = concept_pairs(target.concept, opts.pairs)
    with torch.no_grad():
        goal = target.text_features([item.prompt])[0] + opts.eta * concept_vector(target, pairs)  # (R2)
    population = vocab[torch.randint(len(vocab), (opts.population, opts.length), generator=gen)]

    def decode(rows: torch.Tensor) -> list[str]:
        return [tokenizer.decode(r.tolist(), skip_special_tokens=True).strip() or "." for r in rows]

    best, best_score, trace = None, -float("inf"), []
    for generation in range(opts.generations):
        with torch.no_grad():
            scores = fitness(target.text_features(decode(population)), goal)
        top = int(scores.argmax())
        if float(scores[top]) > best_score:
            best, best_score = population[top].clone(), float(scores[top])
        if generation % max(1, opts.generations // 20) == 0:
            trace.append({"generation": generation, "distance": round(-best_score, 4)})
        population = evolve(population, scores, vocab, opts, gen)
        if progress is not None:
            progress(generation + 1, opts.generations)
    adversarial = decode(best[None])[0]
    images, reads, success = target.check([adversarial], item.seed)
    return {
        "adversarial_prompt": adversarial,
        "token_ids": best.tolist(),
        "success": success,
        "iterations": opts.generations,
        "trace": trace,
        "images": images,
        "reads": reads,
        "seconds": round(time.perf_counter() - start, 2),
    }
