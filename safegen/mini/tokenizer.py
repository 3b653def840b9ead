"""A CLIP-format BPE tokenizer for the mini world, learned from its own caption vocabulary.

The real CLIP vocabulary cannot be downloaded here, so the mini model ships a tokenizer in the same
file format (``vocab.json`` + ``merges.txt``, loaded by ``transformers.CLIPTokenizer``). Merges are learned
by plain byte-pair encoding over every word the caption templates can produce, until each of those
words is one token; any other word still tokenizes, into smaller pieces, as with real CLIP.

    python -m safegen.mini.tokenizer OUT_DIR
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

from safegen.mini.world import World

SPECIALS = ("<|startoftext|>", "<|endoftext|>")
MAX_LENGTH = 32
_PRETOKEN = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def corpus_words(world: World) -> Counter:
    """Every pre-token a mini-world caption can contain, with a rough frequency."""
    text = world.caption_words()
    words: Counter = Counter()
    for line in text:
        line = re.sub(r"\{\w+\}", " ", line.lower())
        words.update(_PRETOKEN.findall(line))
    return words


def learn_merges(words: Counter) -> list[tuple[str, str]]:
    """Byte-pair merges until every word of ``words`` is a single symbol."""
    byte_map = _bytes_to_unicode()
    seqs = {w: [byte_map[b] for b in w.encode()] for w in words}
    for s in seqs.values():
        s[-1] += "</w>"
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:], strict=False):
                pairs[(a, b)] += words[w]
        if not pairs:
            return merges
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        for w, s in seqs.items():
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out


def build_tokenizer_files(out_dir: str | Path, world: World | None = None) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs to ``out_dir``."""
    world = world or World.load()
    merges = learn_merges(corpus_words(world))
    byte_chars = list(_bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + list(SPECIALS)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": SPECIALS[0],
        "eos_token": SPECIALS[1],
        "unk_token": SPECIALS[1],
        "pad_token": SPECIALS[1],
        "do_lower_case": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {
        "bos_token": SPECIALS[0],
        "eos_token": SPECIALS[1],
        "unk_token": SPECIALS[1],
        "pad_token": SPECIALS[1],
    }
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return out


if __name__ == "__main__":
    print(build_tokenizer_files(sys.argv[1]))
