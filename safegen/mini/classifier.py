"""The mini world's concept classifier: reads the object, colour and texture of each object in a scene.

A small CNN with a count head (1 or 2 objects) and, for each of two slots (left to right), one head per
axis. Trained on renders with blur, noise and colour jitter so it stays accurate on generated images.
It is the evaluator of ``safegen bench mini``; no erasure method may train on it.

    python -m safegen.mini.classifier train --minutes 8
"""

from __future__ import annotations

import argparse
import time
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from safegen.errors import SafegenError
from safegen.mini.data import RenderedSet, cached_set
from safegen.mini.world import AXES, World

WEIGHTS = "mini-classifier.safetensors"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class ConceptNet(nn.Module):
    """(B, 3, 64, 64) in [-1, 1] -> count logits (B, 2) and per-slot, per-axis logits."""

    def __init__(self, sizes: tuple[int, ...] = (6, 6, 5), width: int = 16):
        super().__init__()
        self.sizes = sizes
        self.features = nn.Sequential(
            _block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width)
        )
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 8 * 8, 256), nn.ReLU(inplace=True))
        self.count = nn.Linear(256, 2)
        self.heads = nn.ModuleList([nn.Linear(256, n) for _ in range(2) for n in sizes])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.trunk(self.features(x))  # (B, 256)
        return self.count(h), [head(h) for head in self.heads]  # heads: slot-major, axis-minor


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random Gaussian blur, noise and brightness/contrast jitter on a (B, 3, H, W) batch in [-1, 1]."""
    b = x.shape[0]
    sigma = torch.rand(b, generator=gen) * 1.2
    r = torch.arange(-2, 3, dtype=torch.float32)
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)  # (B, 5)
    xb = x.reshape(1, b * 3, *x.shape[2:])
    kx = k1.repeat_interleave(3, 0)[:, None, None, :]  # (3B, 1, 1, 5)
    xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), kx, groups=b * 3)
    xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), kx.transpose(2, 3), groups=b * 3)
    x = xb.reshape(x.shape)
    contrast = 1 + (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.3
    bright = (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.2
    noise = torch.randn(x.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.12
    return (x * contrast + bright + noise).clamp(-1, 1)


def _loss(net: ConceptNet, x: torch.Tensor, count: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    count_logits, heads = net(x)
    loss = F.cross_entropy(count_logits, count - 1)
    for slot in range(2):
        for a in range(3):
            target = attrs[:, slot, a]
            keep = target >= 0
            if keep.any():
                loss = loss + F.cross_entropy(heads[slot * 3 + a][keep], target[keep])
    return loss


def train(
    data: RenderedSet, val: RenderedSet, minutes: float, out: Path, batch: int = 128, lr: float = 2e-3
) -> dict:
    torch.manual_seed(0)
    net = ConceptNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    start, step = time.time(), 0
    while (frac := (time.time() - start) / (60 * minutes)) < 1:
        idx = torch.randint(len(data), (batch,), generator=gen)
        x = augment(data.images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1, gen)
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * frac))  # cosine over the time budget
        loss = _loss(net, x, data.count[idx], data.attrs[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    net.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    # shipped as fp16 (the bundled-weights budget); loaded back as fp32
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out))
    return evaluate(MiniClassifier(net), val)


def evaluate(clf: MiniClassifier, val: RenderedSet, blur: bool = False) -> dict:
    """Per-axis accuracy over every object of ``val`` (and count accuracy)."""
    preds = clf.predict_indices(val.images.permute(0, 3, 1, 2).float() / 127.5 - 1)
    count_acc = float((preds["count"] == val.count).float().mean())
    acc = {}
    for a, axis in enumerate(AXES):
        mask = val.attrs[:, :, a] >= 0
        acc[axis] = float((preds["attrs"][:, :, a] == val.attrs[:, :, a])[mask].float().mean())
    return {"count": count_acc, **acc, "n": len(val)}


class MiniClassifier:
    """Reads each object of mini-world images. ``classify`` takes PIL images or (H, W, 3) uint8 arrays."""

    def __init__(self, net: ConceptNet):
        self.net = net.eval()
        self.world = World.load()

    @staticmethod
    @lru_cache(maxsize=1)
    def load(path: str | None = None) -> MiniClassifier:
        src = Path(path) if path else Path(str(resources.files("safegen").joinpath("assets", WEIGHTS)))
        if not src.exists():
            raise SafegenError(f"Mini-world classifier weights not found at {src}")
        net = ConceptNet()
        net.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(src)).items()}
        )
        return MiniClassifier(net)

    @torch.no_grad()
    def predict_indices(self, x: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
        counts, attrs = [], []
        for i in range(0, x.shape[0], batch):
            count_logits, heads = self.net(x[i : i + batch])
            counts.append(count_logits.argmax(1) + 1)
            attrs.append(
                torch.stack(
                    [torch.stack([heads[s * 3 + a].argmax(1) for a in range(3)], 1) for s in range(2)], 1
                )
            )
        count, att = torch.cat(counts), torch.cat(attrs)  # (N,), (N, 2, 3)
        att[:, 1][count == 1] = -1
        return {"count": count, "attrs": att}

    def classify(self, images: list) -> list[list[dict[str, str]]]:
        """For each image, the list of objects (left to right), each ``{object, color, texture}``."""
        arrays = [np.asarray(im.convert("RGB").resize((64, 64), Image.BICUBIC)) if isinstance(im, Image.Image)
                  else np.asarray(im) for im in images]  # fmt: skip
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
        pred = self.predict_indices(x)
        out = []
        for c, att in zip(pred["count"].tolist(), pred["attrs"].tolist(), strict=True):
            out.append([{a: self.world.values[a][att[s][k]] for k, a in enumerate(AXES)} for s in range(c)])
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["train", "eval"])
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("safegen/assets") / WEIGHTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    val = cached_set("work-tmp/val.safetensors", 3000, seed=2)
    if args.stage == "train":
        data = cached_set("work-tmp/train.safetensors", 60000, seed=1)
        print(train(data, val, args.minutes, args.out))
    else:
        print(evaluate(MiniClassifier.load(str(args.out)), val))


if __name__ == "__main__":
    main()
