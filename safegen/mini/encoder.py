"""The mini world's image-text encoder: the frozen image encoder of SC-DPO's cost model and its reward.

It plays CLIP's part on the mini world. It is trained **separately from the evaluator**
(:mod:`safegen.mini.classifier`, which ``bench mini`` scores with) so that erasure is never trained on
the test metric:

- objective: CLIP-style contrastive matching of images and captions (symmetric InfoNCE, scenes with the
  same objects count as positives), not per-axis classification;
- architecture: a GroupNorm/SiLU CNN image tower and a bag-of-words text tower;
- data: its own render seeds (11 train, 12 validation; the classifier uses 1 and 2), captions re-drawn
  with synonyms every time a scene is seen, and its own augmentations (blur, noise, shifts, colour gain).

Weights: ``safegen/assets/mini-encoder.safetensors`` (vocabulary and sizes in the file's metadata).

    python -m safegen.mini.encoder train --minutes 10     # about 10 minutes on 2 CPU cores
    python -m safegen.mini.encoder eval                   # zero-shot accuracy per axis on held-out renders
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from safegen.errors import SafegenError
from safegen.mini.data import RenderedSet, cached_set
from safegen.mini.world import AXES, World

WEIGHTS = "mini-encoder.safetensors"
_WORD = re.compile(r"[a-z]+")


def default_path() -> Path:
    return Path(str(resources.files("safegen").joinpath("assets", WEIGHTS)))


def build_vocab(world: World) -> list[str]:
    """Every word of the captions (templates, values, synonyms, misspellings), sorted; index 0 is unknown."""
    texts = world.caption_words()
    return ["<unk>", *sorted({w for t in texts for w in _WORD.findall(t.lower())} - {"<unk>"})]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(4, cout), nn.SiLU())


class MiniEncoderNet(nn.Module):
    """Image tower (B, 3, 64, 64) in [-1, 1] -> (B, dim); text tower (B, T) word ids -> (B, dim)."""

    def __init__(self, vocab_size: int, dim: int = 64, width: int = 24):
        super().__init__()
        self.config = {"vocab_size": vocab_size, "dim": dim, "width": width}
        self.image = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(4, width), nn.SiLU(),
            _block(width, 2 * width), _block(2 * width, 4 * width),   # 64 -> 32 -> 16
            _block(4 * width, 4 * width), _block(4 * width, 4 * width),  # -> 8 -> 4
            nn.Flatten(), nn.Linear(4 * width * 16, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim),
        )  # fmt: skip
        self.words = nn.EmbeddingBag(vocab_size, 2 * dim, mode="mean")
        self.text = nn.Sequential(nn.SiLU(), nn.Linear(2 * dim, dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(x), dim=-1)  # (B, dim)

    def encode_text(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(self.words(ids, offsets)), dim=-1)  # (B, dim)


class MiniEncoder:
    """The trained encoder with its vocabulary: the ``embed_images`` / ``embed_texts`` interface of SC-DPO.

    Embeddings are L2-normalised, so ``embed_images(x) @ embed_texts(t).T`` is a cosine (the reward).
    """

    def __init__(self, net: MiniEncoderNet, vocab: list[str], name: str = "mini-encoder"):
        self.net = net.eval()
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.name = name
        self.dim = net.config["dim"]

    @classmethod
    def load(cls, path: str | Path | None = None) -> MiniEncoder:
        """Load weights written by :meth:`save` (default: the bundled ``assets/mini-encoder.safetensors``).

        Raises:
            SafegenError: the file is missing or not an encoder file.
        """
        src = Path(path) if path else default_path()
        if not src.is_file():
            raise SafegenError(
                f"The mini-world encoder weights are missing ({src}). Train them with "
                "`python -m safegen.mini.encoder train --minutes 10`, or pass encoder=PATH."
            )
        with safe_open(str(src), framework="pt") as f:
            meta = f.metadata() or {}
            if "vocab" not in meta or "config" not in meta:
                raise SafegenError(f"{src} is not a mini-world encoder file (no vocab/config metadata).")
            state = {k: f.get_tensor(k) for k in f.keys()}
        net = MiniEncoderNet(**json.loads(meta["config"]))
        net.load_state_dict(state)
        return cls(net, json.loads(meta["vocab"]), name=str(src))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        meta = {"vocab": json.dumps(self.vocab), "config": json.dumps(self.net.config)}
        save_file(state, str(path), metadata=meta)
        return path

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (flat word ids, offsets) for ``nn.EmbeddingBag``; unknown words map to 0."""
        ids, offsets = [], []
        for text in texts:
            offsets.append(len(ids))
            ids.extend(self.index.get(w, 0) for w in _WORD.findall(text.lower()) or ["<unk>"])
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(N, dim) normalised text embeddings."""
        return self.net.encode_text(*self.tokenize(list(texts)))

    @torch.no_grad()
    def embed_images(self, images: list[Any], batch: int = 256) -> torch.Tensor:
        """(N, dim) normalised embeddings of PIL images or (H, W, 3) uint8 arrays (resized to 64 px)."""
        x = to_pixels(images)
        return torch.cat([self.net.encode_image(x[i : i + batch]) for i in range(0, len(x), batch)])


def to_pixels(images: list[Any], size: int = 64) -> torch.Tensor:
    """PIL images or (H, W, 3) uint8 arrays -> (N, 3, size, size) float in [-1, 1]."""
    arrays = []
    for im in images:
        if not isinstance(im, Image.Image):
            im = Image.fromarray(np.asarray(im, dtype=np.uint8))
        im = im.convert("RGB")
        arrays.append(np.asarray(im if im.size == (size, size) else im.resize((size, size), Image.BICUBIC)))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Make clean renders look generated: random box blur, shifts, per-channel gain and pixel noise."""
    b = x.shape[0]
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(b, 1, 1, 1, generator=gen)
    x = mix * blurred + (1 - mix) * x
    dx, dy = (int(v) for v in torch.randint(-3, 4, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    gain = 1 + (torch.rand(b, 3, 1, 1, generator=gen) - 0.5) * 0.2
    noise = torch.randn(x.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.1
    return (x * gain + noise).clamp(-1, 1)


# --------------------------------------------------------------------------- training
def _targets(attrs: torch.Tensor) -> torch.Tensor:
    """(B, B) soft targets: scenes with the same objects (left to right) are all positives."""
    keys = attrs.reshape(len(attrs), -1)  # (B, 6), -1 for an absent second object
    same = (keys[:, None, :] == keys[None, :, :]).all(-1).float()  # (B, B)
    return same / same.sum(1, keepdim=True)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, targets: torch.Tensor):
    """Symmetric InfoNCE with soft targets: CE(s * I T^T, targets) averaged over both directions."""
    logits = scale.exp().clamp(max=100) * img @ txt.T  # (B, B)
    return 0.5 * (
        torch.sum(-targets * F.log_softmax(logits, 1), 1).mean()
        + torch.sum(-targets.T * F.log_softmax(logits.T, 1), 1).mean()
    )


def train(
    data: RenderedSet,
    steps: int | None = None,
    minutes: float | None = None,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 100,
) -> MiniEncoder:
    """Train an encoder on ``data`` for ``steps`` steps or ``minutes`` minutes (cosine learning rate)."""
    if (steps is None) == (minutes is None):
        raise ValueError("give exactly one of steps or minutes")
    world = World.load()
    torch.manual_seed(seed)
    vocab = build_vocab(world)
    encoder = MiniEncoder(MiniEncoderNet(len(vocab)), vocab)
    net = encoder.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    start, step = time.time(), 0
    while True:
        frac = step / steps if steps is not None else (time.time() - start) / (60 * minutes)
        if frac >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * frac))
        idx = torch.randint(len(data), (batch,), generator=gen)
        captions = [world.caption(data.scene(int(i), world), rng) for i in idx]
        x = augment(data.images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1, gen)
        loss = contrastive_loss(
            net.encode_image(x),
            net.encode_text(*encoder.tokenize(captions)),
            net.logit_scale,
            _targets(data.attrs[idx]),
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if log_every and step % log_every == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    net.eval()
    return encoder


def zero_shot_accuracy(encoder: MiniEncoder, val: RenderedSet) -> dict[str, float]:
    """Per-axis accuracy of picking, for each single-object image, the best of all 180 canonical captions."""
    world = World.load()
    combos = list(itertools.product(*(world.values[a] for a in AXES)))
    texts = [f"a {c} {t} {o}" for o, c, t in combos]
    single = torch.nonzero(val.count == 1).flatten()
    images = [val.images[int(i)].numpy() for i in single]
    best = (encoder.embed_images(images) @ encoder.embed_texts(texts).T).argmax(1)  # (N,)
    out = {}
    for a, axis in enumerate(AXES):
        pred = torch.tensor([world.values[axis].index(combos[int(k)][a]) for k in best])
        out[axis] = float((pred == val.attrs[single, 0, a]).float().mean())
    return {**out, "n": len(single)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["train", "eval"])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=default_path())
    ap.add_argument("--cache", type=Path, default=Path("work-tmp"), help="where rendered sets are cached")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    val = cached_set(args.cache / "encoder-val.safetensors", 2000, seed=12)
    if args.stage == "train":
        data = cached_set(args.cache / "encoder-train.safetensors", 40000, seed=11)
        encoder = train(data, minutes=args.minutes)
        encoder.save(args.out)
        print(f"wrote {args.out}")
    print(json.dumps(zero_shot_accuracy(MiniEncoder.load(args.out), val)))


if __name__ == "__main__":
    main()
