"""Find a concept's words in a prompt from the text encoder's own token embeddings (our addition).

Keyword matching (:func:`safegen.concepts.rewrite`) misses every word the registry was not told: synonyms,
misspellings, other languages. The text encoder's input embedding table places such words near the
keywords they mean, so a guard can look there instead. For each word w of the prompt (a run of letters
or digits) and the concept's keywords k::

    v(w)     = mean_{i in tokens(w)} E[i]                                           # a word's vector
    score(w) = max_{k in keyword words} cos(v(w), v(k))                             # Eq. (D1) word score
    score(prompt) = max_w score(w)                                                   # Eq. (D2) prompt score
    flagged(w) = score(w) >= tau                                                     # Eq. (D3)

with E the text encoder's input embedding matrix (static: no context, no UNet call). A keyword itself
scores 1; a word split into several tokens is compared as a whole (the mean of its tokens), so a shared
sub-word alone does not flag it. It sees words only: a prompt that reaches the concept through other
words (an artist, a description) scores low. On a real CLIP text encoder the scale differs from the mini
model's: calibrate ``tau`` on prompts of your own.

Phrases: a keyword of several words (``van gogh``) is compared with runs of as many prompt words, word
by word in order, and the run scores the least of those word cosines (Eq. D1': every word must match);
each word of the run takes the run's score when it is higher than its own. So ``a white van`` does not
flag ``van`` (``white van`` is far from ``van gogh`` word by word), and a single-word keyword that only
glues a phrase's words (``vangogh``) is matched literally, not through the embedding of its pieces.
Words inside one of the concept's ``ignore`` phrases (``naked eye``) score 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TokenVectors = Callable[[str], torch.Tensor]  # a word -> its tokens' input embeddings, (n_tokens, D)
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class WordScore:
    """One word of a prompt: where it is and how close it is to the concept (Eq. D1)."""

    word: str
    start: int
    end: int
    score: float


class ConceptDetector:
    """Scores a prompt's words against a concept's keywords in the text encoder's token-embedding space.

    Args:
        token_vectors: a word -> the input embeddings of its tokens (see ``RunContext.token_vectors``).
        keywords: the concept's keywords (the registry's ``keywords``; never its held-out synonyms).
    """

    def __init__(
        self, token_vectors: TokenVectors, keywords: Iterable[str], ignore: Iterable[str] = ()
    ) -> None:
        self.token_vectors = token_vectors
        phrases = [tuple(_WORD.findall(k.lower())) for k in keywords]
        phrases = [p for p in dict.fromkeys(phrases) if p]
        glued = {"".join(p) for p in phrases if len(p) > 1}
        self.literal = {p[0] for p in phrases if len(p) == 1 and p[0] in glued}  # "vangogh": exact only
        singles = [p[0] for p in phrases if len(p) == 1 and p[0] not in glued]
        vectors = [v for v in map(self._vector, singles) if v is not None]
        self.keys = F.normalize(torch.stack(vectors), dim=-1) if vectors else None  # (K, D)
        self.phrases = [p for p in phrases if len(p) > 1 and all(self._vector(w) is not None for w in p)]
        if self.keys is None and not self.phrases and not self.literal:
            raise ValueError("the concept has no keyword the tokenizer can encode")
        self.ignore = [tuple(_WORD.findall(i.lower())) for i in ignore if _WORD.findall(i.lower())]
        self._cache: dict[str, float] = {}
        self._pair: dict[tuple[str, str], float] = {}

    def word_score(self, word: str) -> float:
        """Eq. (D1) for one word (cached: prompts share their words)."""
        word = word.lower()
        if word not in self._cache:
            vec = self._vector(word) if self.keys is not None else None
            sims = F.normalize(vec, dim=-1) @ self.keys.T if vec is not None else torch.zeros(1)  # (K,)
            self._cache[word] = 1.0 if word in self.literal else round(float(sims.max()), 6)
        return self._cache[word]

    def pair_score(self, word: str, key: str) -> float:
        """cos(v(word), v(key)) for one word of a phrase (cached)."""
        pair = (word.lower(), key)
        if pair not in self._pair:
            a, b = self._vector(pair[0]), self._vector(key)
            self._pair[pair] = 0.0 if a is None or b is None else float(F.cosine_similarity(a, b, dim=0))
        return self._pair[pair]

    def phrase_score(self, words: Sequence[str], phrase: Sequence[str]) -> float:
        """Eq. (D1'): the least cosine of a run of prompt words with a keyword phrase, word by word."""
        return round(min(self.pair_score(w, k) for w, k in zip(words, phrase, strict=True)), 6)

    def _vector(self, word: str) -> torch.Tensor | None:
        vecs = self.token_vectors(word)
        return vecs.float().mean(0) if vecs.numel() else None

    def words(self, prompt: str) -> list[WordScore]:
        """Every word of ``prompt`` with its score (its own, or its best phrase run's), in order."""
        found = list(_WORD.finditer(prompt))
        text = [m.group().lower() for m in found]
        scores = [self.word_score(w) for w in text]
        for phrase in self.phrases:
            n = len(phrase)
            for i in range(len(text) - n + 1):
                score = self.phrase_score(text[i : i + n], phrase)
                for j in range(i, i + n):
                    scores[j] = max(scores[j], score)
        for phrase in self.ignore:  # the concept's stop list: these words are not the concept here
            n = len(phrase)
            for i in range(len(text) - n + 1):
                if tuple(text[i : i + n]) == phrase:
                    scores[i : i + n] = [0.0] * n
        return [WordScore(m.group(), m.start(), m.end(), s) for m, s in zip(found, scores, strict=True)]

    def score(self, prompt: str) -> float:
        """Eq. (D2): the largest word score (0 for a prompt without words)."""
        return max((w.score for w in self.words(prompt)), default=0.0)

    def scores(self, prompts: Sequence[str]) -> torch.Tensor:
        """Eq. (D2) per prompt, (B,)."""
        return torch.tensor([self.score(p) for p in prompts])

    def rewrite(self, prompt: str, tau: float, replacement: str) -> str:
        """The prompt with every flagged word (Eq. D3) replaced; a run of flagged words becomes one."""
        out, last, run_open = [], 0, False
        for w in self.words(prompt):
            if w.score < tau:
                run_open = False
                continue
            between = prompt[last : w.start]
            if run_open and not between.strip(" -"):
                last = w.end  # the same run: "round shape", "five-pointed"
                continue
            out.append(between)
            out.append(replacement)
            last, run_open = w.end, True
        out.append(prompt[last:])
        text = "".join(out)
        return re.sub(r"\s{2,}", " ", text).strip() if not replacement else text
