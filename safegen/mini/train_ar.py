"""Train the bundled ``mini-ar`` model on the mini world: a LlamaGen VQ tokenizer, then the GPT.

Both parts are safegen's LlamaGen classes (:mod:`safegen.ar.vq`, :mod:`safegen.ar.llamagen`) in a tiny
configuration. Text conditioning: LlamaGen conditions on frozen FLAN-T5-XL features; mini-ar instead
trains a small ``CLIPTextModel`` (2 layers, 128-d) jointly with the GPT, on the mini world's CLIP-format
tokenizer (:mod:`safegen.mini.tokenizer`), and feeds its 32 left-padded features through LlamaGen's
caption MLP exactly as T5 features would be.

    python -m safegen.mini.train_ar vq --minutes 20             # stage 1: VQ autoencoder (64 px -> 8x8 codes)
    python -m safegen.mini.train_ar vq --from safegen/assets/mini-ar   # or start from a bundled VQ
    python -m safegen.mini.train_ar gpt --minutes 90            # stage 2: text encoder + GPT (add --resume)
    python -m safegen.mini.train_ar export --out safegen/assets/mini-ar

Recipes. VQ: L1 + MSE reconstruction + codebook/commitment loss (beta 0.25) on l2-normalised codes, no GAN
or perceptual loss, codes unused for 200 steps restarted on random encoder outputs. GPT: next-token cross
entropy on the VQ codes of the rendered scenes, captions re-drawn with fresh synonyms each time a scene is
seen, 10 % caption dropout to LlamaGen's fixed unconditional embedding (for CFG), AdamW with warm-up, grad
clip 1, EMA 0.998 of the weights (exported). Every stage stops after ``--minutes`` (or ``--steps``),
checkpoints to ``--work`` every 10 minutes and at the end, and continues from there with ``--resume``.
Weights are safetensors; the optimizer state is flattened into safetensors too (no pickle).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from safegen.ar import save_llamagen
from safegen.ar.llamagen import GPTConfig, LlamaGenGPT, TextConditioner
from safegen.ar.vq import VQConfig, VQModel
from safegen.mini.data import RenderedSet, cached_set, ema_update, log_row, to_pixels
from safegen.mini.tokenizer import MAX_LENGTH, build_tokenizer_files
from safegen.mini.warmstart import carry_text_encoder
from safegen.mini.world import World

# Shapes per preset: "mini" is the bundled model, "tiny" runs a few steps in tests.
PRESETS = {
    "mini": {
        "vq": dict(codebook_size=512, codebook_embed_dim=8, encoder_ch_mult=(1, 2, 2, 4),
                   decoder_ch_mult=(1, 2, 2, 4), z_channels=64, ch=32, num_res_blocks=1, norm_groups=8),
        "gpt": dict(dim=192, n_layer=4, n_head=6, multiple_of=64, caption_dim=128, vocab_size=512,
                    cls_token_num=MAX_LENGTH, block_size=64),
        "text": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4),
    },
    "tiny": {
        "vq": dict(codebook_size=16, codebook_embed_dim=4, encoder_ch_mult=(1, 1, 1, 1, 1),
                   decoder_ch_mult=(1, 1, 1, 1, 1), z_channels=8, ch=8, num_res_blocks=1, norm_groups=4),
        "gpt": dict(dim=32, n_layer=1, n_head=4, multiple_of=16, caption_dim=16, vocab_size=16,
                    cls_token_num=MAX_LENGTH, block_size=16),
        "text": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
    },
}  # fmt: skip
SIZE = 64
SAVE_EVERY_S = 600
EMA_DECAY = 0.998  # GPT and text encoder; the exported weights are the EMA


# --------------------------------------------------------------------------- checkpoints (safetensors only)
def save_modules(folder: Path, step: int, **modules: torch.nn.Module | torch.optim.Optimizer) -> None:
    """Each state dict (an optimizer's flattened) as ``<name>.safetensors``, then ``state.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in modules.items():
        if isinstance(obj, torch.optim.Optimizer):
            tensors, groups = flatten_optimizer(obj)
            (folder / f"{name}.json").write_text(json.dumps(groups))
        else:
            tensors = {k: v.detach().contiguous() for k, v in obj.state_dict().items()}
        save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / "state.json").write_text(json.dumps({"step": step}))


def load_modules(folder: Path, **modules: torch.nn.Module | torch.optim.Optimizer) -> int:
    """Load what :func:`save_modules` wrote into the given modules; return the saved step."""
    for name, obj in modules.items():
        tensors = load_file(str(folder / f"{name}.safetensors"))
        if isinstance(obj, torch.optim.Optimizer):
            groups = json.loads((folder / f"{name}.json").read_text())
            obj.load_state_dict(unflatten_optimizer(tensors, groups))
        else:
            obj.load_state_dict(tensors)
    return int(json.loads((folder / "state.json").read_text())["step"])


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer state dict as ``{"<param>.<field>": tensor}`` plus its JSON-able param groups."""
    state = opt.state_dict()
    tensors = {
        f"{index}.{key}": value if torch.is_tensor(value) else torch.tensor(value)
        for index, fields in state["state"].items()
        for key, value in fields.items()
    }
    return tensors, state["param_groups"]


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- stage 1: VQ
def train_vq(
    data: RenderedSet,
    work: Path,
    preset: str,
    minutes: float,
    steps: int | None,
    batch: int,
    lr: float = 2e-4,
    resume: bool = False,
) -> VQModel:
    """Train the VQ autoencoder; checkpoints in ``work/vq``."""
    torch.manual_seed(0)
    vq = VQModel(VQConfig.from_dict(PRESETS[preset]["vq"]))
    opt = torch.optim.Adam(vq.parameters(), lr=lr, betas=(0.9, 0.95))
    step = load_modules(work / "vq", vq=vq, optimizer=opt) if resume and (work / "vq").exists() else 0
    for group in opt.param_groups:
        group["lr"] = lr  # --lr also applies when resuming
    gen = torch.Generator().manual_seed(step)
    usage = torch.zeros(vq.config.codebook_size)
    end, last_save, first, l1 = time.time() + 60 * minutes, time.time(), step, torch.tensor(float("nan"))
    while time.time() < end and (steps is None or step - first < steps):
        x = to_pixels(data.images[torch.randint(len(data), (batch,), generator=gen)])
        z = vq.quant_conv(vq.encoder(x))  # (B, e, h, w)
        quant, tokens, q_loss = vq.quantize(z)
        rec = vq.decoder(vq.post_quant_conv(quant))
        l1 = (rec - x).abs().mean()
        loss = l1 + F.mse_loss(rec, x) + q_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        usage += torch.bincount(tokens.flatten(), minlength=usage.numel())
        if step % 200 == 0:
            restart_dead_codes(vq, z, usage, gen)
            log_row(work / "vq.log", step=step, l1=round(l1.item(), 4), used=int((usage > 0).sum()))
            usage.zero_()
        if time.time() - last_save > SAVE_EVERY_S:
            save_modules(work / "vq", step, vq=vq, optimizer=opt)
            last_save = time.time()
    save_modules(work / "vq", step, vq=vq, optimizer=opt)
    log_row(work / "vq.log", step=step, l1=round(l1.item(), 4), done=True)
    return vq


def copy_vq(source: Path, work: Path, preset: str) -> None:
    """Start from the VQ of an existing folder (the renderer's images have not changed)."""
    spec = json.loads((source / "llamagen.json").read_text())
    vq = VQModel(VQConfig.from_dict(PRESETS[preset]["vq"]))
    vq.load_state_dict({k: v.float() for k, v in load_file(str(source / spec["vq"]["weights"])).items()})
    save_modules(work / "vq", 0, vq=vq)
    log_row(work / "vq.log", step=0, done=True, copied_from=str(source))


def restart_dead_codes(vq: VQModel, z: torch.Tensor, usage: torch.Tensor, gen: torch.Generator) -> None:
    """Codes never chosen since the last check take the values of random encoder outputs of the batch."""
    dead = (usage == 0).nonzero().flatten()
    if not len(dead):
        return
    flat = F.normalize(z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=-1)  # (B*h*w, e)
    pick = torch.randint(flat.shape[0], (len(dead),), generator=gen)
    with torch.no_grad():
        vq.quantize.embedding.weight[dead] = flat[pick]


@torch.no_grad()
def tokenize_set(vq: VQModel, data: RenderedSet, batch: int = 256) -> torch.Tensor:
    """(N, block) int16 VQ codes of every image of ``data``."""
    vq.eval()
    out = [vq.encode_tokens(to_pixels(data.images[i : i + batch])) for i in range(0, len(data), batch)]
    return torch.cat(out).to(torch.int16)


def cached_codes(vq: VQModel, data: RenderedSet, work: Path, vq_step: int) -> torch.Tensor:
    """:func:`tokenize_set`, kept in ``work/codes.safetensors`` for the VQ checkpoint of ``vq_step``."""
    path = work / "codes.safetensors"
    if path.exists():
        saved = load_file(str(path))
        if int(saved["vq_step"]) == vq_step and len(saved["codes"]) == len(data):
            return saved["codes"].long()
    codes = tokenize_set(vq, data)
    save_file({"codes": codes, "vq_step": torch.tensor(vq_step)}, str(path))
    return codes.long()


# --------------------------------------------------------------------------- stage 2: text encoder + GPT
def build_text(preset: str, work: Path):
    """The mini tokenizer and a fresh ``CLIPTextModel`` of the preset's size."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(build_tokenizer_files(work / "tokenizer"))
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **PRESETS[preset]["text"],
    )
    return tokenizer, CLIPTextModel(config)


def gpt_loss(
    gpt: LlamaGenGPT, text: TextConditioner, captions: list[str], tokens: torch.Tensor, drop: torch.Tensor
) -> torch.Tensor:
    """Cross entropy of image tokens (B, N) given captions; rows where ``drop`` get the null caption."""
    features, mask = text(captions)  # (B, T, C), (B, T)
    null = gpt.cls_embedding.uncond_embedding[: gpt.config.cls_token_num]  # (T, C)
    features = torch.where(drop[:, None, None], null.expand_as(features), features)  # LlamaGen's token_drop
    logits = gpt(features, mask, tokens[:, :-1])  # (B, N, V)
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())


def train_gpt(
    data: RenderedSet,
    work: Path,
    preset: str,
    minutes: float,
    steps: int | None,
    batch: int,
    lr: float = 5e-4,
    resume: bool = False,
    init_from: Path | None = None,
) -> None:
    """Train the text encoder and GPT on the VQ codes of ``data``; checkpoints in ``work/gpt``.

    ``init_from``: warm start from a bundled folder's GPT and text encoder (token rows remapped by
    :func:`~safegen.mini.warmstart.carry_text_encoder`)."""
    world = World.load()
    vq = VQModel(VQConfig.from_dict(PRESETS[preset]["vq"]))
    load_modules(work / "vq", vq=vq)
    codes = cached_codes(vq, data, work, int(json.loads((work / "vq" / "state.json").read_text())["step"]))
    tokenizer, encoder = build_text(preset, work)
    torch.manual_seed(0)
    gpt = LlamaGenGPT(GPTConfig.from_dict(PRESETS[preset]["gpt"]))
    if init_from is not None and not resume:
        _warm_start(init_from, gpt, encoder, tokenizer, work)
    ema_gpt, ema_text = copy.deepcopy(gpt).requires_grad_(False), copy.deepcopy(encoder).requires_grad_(False)
    params = list(gpt.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    parts = dict(gpt=gpt, text=encoder, ema_gpt=ema_gpt, ema_text=ema_text, optimizer=opt)
    step = load_modules(work / "gpt", **parts) if resume and (work / "gpt").exists() else 0
    text = TextConditioner(tokenizer, encoder, MAX_LENGTH)
    rng, gen = np.random.default_rng(step), torch.Generator().manual_seed(step)
    end, last_save, first, loss = time.time() + 60 * minutes, time.time(), step, torch.tensor(float("nan"))
    gpt.train()
    encoder.train()
    while time.time() < end and (steps is None or step - first < steps):
        idx = torch.randint(len(data), (batch,), generator=gen)
        captions = [world.caption(data.scene(int(i), world), rng) for i in idx]
        drop = torch.rand(batch, generator=gen) < gpt.config.class_dropout_prob
        loss = gpt_loss(gpt, text, captions, codes[idx], drop)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 500)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        ema_update(ema_gpt, gpt, decay)
        ema_update(ema_text, encoder, decay)
        if step % 50 == 0:
            log_row(work / "gpt.log", step=step, loss=round(loss.item(), 4), t=round(time.time(), 1))
        if time.time() - last_save > SAVE_EVERY_S:
            save_modules(work / "gpt", step, **parts)
            last_save = time.time()
    save_modules(work / "gpt", step, **parts)
    log_row(work / "gpt.log", step=step, loss=round(loss.item(), 4), done=True)


def _warm_start(source: Path, gpt: LlamaGenGPT, encoder, tokenizer, work: Path) -> None:
    from transformers import CLIPTextModel, CLIPTokenizer

    spec = json.loads((source / "llamagen.json").read_text())
    gpt.load_state_dict({k: v.float() for k, v in load_file(str(source / spec["gpt"]["weights"])).items()})
    text = spec["text_encoder"]
    old = CLIPTextModel.from_pretrained(source / text["path"], torch_dtype=torch.float32)
    counts = carry_text_encoder(
        old, CLIPTokenizer.from_pretrained(source / text["tokenizer"]), encoder, tokenizer
    )
    log_row(work / "gpt.log", step=0, init_from=str(source), **counts)


# --------------------------------------------------------------------------- export
def export(work: Path, preset: str, out: Path, ema: bool = True, sampling: dict | None = None) -> Path:
    """Write the bundled folder (fp16 safetensors, ``llamagen.json``) from the checkpoints in ``work``."""
    vq = VQModel(VQConfig.from_dict(PRESETS[preset]["vq"]))
    load_modules(work / "vq", vq=vq)
    gpt = LlamaGenGPT(GPTConfig.from_dict(PRESETS[preset]["gpt"]))
    tokenizer, encoder = build_text(preset, work)
    load_modules(
        work / "gpt", **({"ema_gpt": gpt, "ema_text": encoder} if ema else {"gpt": gpt, "text": encoder})
    )
    folder = save_llamagen(out, gpt, vq, encoder, tokenizer, image_size=SIZE, kind="clip", sampling=sampling)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(json.dumps({"out": str(folder), "megabytes": round(size / 2**20, 2)}))
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["vq", "gpt", "export"])
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of the stage")
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: the stage's own)")
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
    ap.add_argument("--from", dest="source", type=Path, default=None, help="vq: copy this folder's VQ")
    ap.add_argument(
        "--init-from", type=Path, default=None, help="gpt: warm start from this folder's GPT + text"
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="mini")
    ap.add_argument("--work", type=Path, default=Path("work-tmp/mini-ar"))
    ap.add_argument(
        "--data", type=Path, default=Path("work-tmp/train.safetensors"), help="rendered set cache"
    )
    ap.add_argument("--n-images", type=int, default=60000, help="images rendered when --data does not exist")
    ap.add_argument("--out", type=Path, default=Path("safegen/assets/mini-ar"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--sampling", default="", help="export: sampling defaults as JSON (benchmarks/sweep_ar_sampling.py)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "export":
        sampling = json.loads(args.sampling) if args.sampling else None
        export(args.work, args.preset, args.out, sampling=sampling)
        return
    if args.stage == "vq" and args.source:
        copy_vq(args.source, args.work, args.preset)
        return
    data = cached_set(args.data, args.n_images, seed=1)
    if args.stage == "vq":
        train_vq(
            data,
            args.work,
            args.preset,
            args.minutes,
            args.steps,
            args.batch or 32,
            args.lr or 2e-4,
            args.resume,
        )
    else:
        train_gpt(
            data,
            args.work,
            args.preset,
            args.minutes,
            args.steps,
            args.batch or 64,
            args.lr or 5e-4,
            args.resume,
            args.init_from,
        )


if __name__ == "__main__":
    main()
