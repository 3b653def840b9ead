"""Train the bundled mini Stable Diffusion on the mini world (VAE, then text encoder + UNet).

The result is a standard diffusers directory (``StableDiffusionPipeline.from_pretrained(dir)`` loads it
unchanged) holding a CLIP-format tokenizer learned from the captions (:mod:`safegen.mini.tokenizer`), a
``CLIPTextModel``, an ``AutoencoderKL`` (64 px -> 16x16x4 latents), a ``UNet2DConditionModel`` and a
``DPMSolverMultistepScheduler``, stored as fp16 safetensors.

    python -m safegen.mini.train_sd vae --minutes 10            # or: vae --from safegen/assets/mini-sd
    python -m safegen.mini.train_sd unet --minutes 70            # or warm: --init-from safegen/assets/mini-sd
    python -m safegen.mini.train_sd export --out safegen/assets/mini-sd

Training recipe: epsilon prediction on the scaled-linear DDPM schedule, min-SNR loss weighting
(gamma 5), 10 % caption dropout for classifier-free guidance, EMA of the weights, captions re-drawn
with fresh synonyms every time a scene is seen.
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
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from safegen.hub import text_encoder_loads_in_float32
from safegen.mini.data import RenderedSet, cached_set, ema_update, log_row, to_pixels
from safegen.mini.tokenizer import MAX_LENGTH, build_tokenizer_files
from safegen.mini.warmstart import carry_text_encoder
from safegen.mini.world import World

WORK = Path("work-tmp")
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[16, 32, 64],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def unet_config() -> dict:
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[32, 64, 128],
        layers_per_block=1,
        cross_attention_dim=128,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# --------------------------------------------------------------------------- VAE
def train_vae(
    data: RenderedSet,
    minutes: float,
    batch: int = 32,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    resume: bool = False,
) -> None:
    torch.manual_seed(0)
    vae = AutoencoderKL.from_pretrained(WORK / "vae") if resume else AutoencoderKL(**vae_config())
    vae = vae.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    end, step, gen = time.time() + 60 * minutes, 0, torch.Generator().manual_seed(0)
    while time.time() < end:
        idx = torch.randint(len(data), (batch,), generator=gen)
        x = to_pixels(data.images[idx]).contiguous(memory_format=torch.channels_last)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        l1 = (rec - x).abs().mean()
        loss = l1 + F.mse_loss(rec, x) + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 20 == 0:
            log_row(WORK / "vae.log", step=step, l1=round(l1.item(), 4), loss=round(loss.item(), 4))
    # the latent scale that gives unit variance, as SD's scaling_factor
    with torch.no_grad():
        z = torch.cat(
            [vae.encode(to_pixels(data.images[i : i + 256])).latent_dist.mean for i in range(0, 1024, 256)]
        )
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(WORK / "vae", safe_serialization=True)
    log_row(WORK / "vae.log", step=step, done=True, scaling_factor=float(1.0 / z.std()))


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL, data: RenderedSet, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(data), batch):
        dist = vae.encode(to_pixels(data.images[i : i + batch])).latent_dist
        means.append(dist.mean.half())
        stds.append(dist.std.half())
    return torch.cat(means), torch.cat(stds)


# --------------------------------------------------------------------------- UNet + text encoder


def train_unet(
    data: RenderedSet,
    minutes: float,
    batch: int = 64,
    lr: float = 8e-4,
    resume: bool = False,
    init_from: Path | None = None,
) -> None:
    world = World.load()
    tokenizer = CLIPTokenizer.from_pretrained(build_tokenizer_files(WORK / "tokenizer"))
    vae = AutoencoderKL.from_pretrained(WORK / "vae")
    lat_path = WORK / "latents.pt"
    if lat_path.exists():
        lat = torch.load(lat_path, weights_only=True)
        mean, std = lat["mean"], lat["std"]
    else:
        mean, std = encode_latents(vae, data)
        torch.save({"mean": mean, "std": std}, lat_path)
    scale = vae.config.scaling_factor
    ckpt = WORK / "ckpt"
    if resume and ckpt.exists():
        unet = UNet2DConditionModel.from_pretrained(ckpt / "unet")
        text = CLIPTextModel.from_pretrained(ckpt / "text_encoder")
        state = json.loads((ckpt / "state.json").read_text())
    else:
        torch.manual_seed(0)
        unet, text, state = (
            UNet2DConditionModel(**unet_config()),
            CLIPTextModel(text_config(tokenizer)),
            {"step": 0},
        )
        if init_from is not None:  # warm start: the UNet as it was, the text encoder remapped
            unet = UNet2DConditionModel.from_pretrained(init_from / "unet", torch_dtype=torch.float32)
            old = CLIPTextModel.from_pretrained(init_from / "text_encoder", torch_dtype=torch.float32)
            counts = carry_text_encoder(
                old, CLIPTokenizer.from_pretrained(init_from / "tokenizer"), text, tokenizer
            )
            log_row(WORK / "unet.log", step=0, init_from=str(init_from), **counts)
    ema_u, ema_t = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
    if resume and (ckpt / "ema_unet").exists():
        ema_u = UNet2DConditionModel.from_pretrained(ckpt / "ema_unet").requires_grad_(False)
        ema_t = CLIPTextModel.from_pretrained(ckpt / "ema_text_encoder").requires_grad_(False)
    noise_sched = DDPMScheduler(**SCHEDULE)
    snr = noise_sched.alphas_cumprod / (1 - noise_sched.alphas_cumprod)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    rng, gen = np.random.default_rng(state["step"]), torch.Generator().manual_seed(state["step"])
    end, step, last_save = time.time() + 60 * minutes, state["step"], time.time()
    unet = unet.to(memory_format=torch.channels_last)
    unet.train()
    text.train()
    while time.time() < end:
        idx = torch.randint(len(data), (batch,), generator=gen)
        captions = [world.caption(data.scene(int(i), world), rng) if rng.random() > 0.1 else "" for i in idx]
        ids = tokenizer(
            captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        )
        z = (mean[idx].float() + std[idx].float() * torch.randn(mean[idx].shape, generator=gen)) * scale
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        zt = noise_sched.add_noise(z, noise, t)
        cond = text(ids.input_ids)[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        w = torch.clamp(snr[t], max=5.0) / snr[t]  # min-SNR-5 weighting for epsilon prediction
        loss = (w * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        warm = min(1.0, (step + 1) / 200)
        for g in opt.param_groups:
            g["lr"] = lr * warm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(0.999, (1 + step) / (10 + step))
        ema_update(ema_u, unet, decay)
        ema_update(ema_t, text, decay)
        if step % 25 == 0:
            log_row(WORK / "unet.log", step=step, loss=round(loss.item(), 4), t=round(time.time(), 1))
        if time.time() - last_save > 600 or time.time() >= end:
            _save_ckpt(ckpt, unet, text, ema_u, ema_t, step)
            last_save = time.time()
    _save_ckpt(ckpt, unet, text, ema_u, ema_t, step)


def _save_ckpt(ckpt: Path, unet, text, ema_u, ema_t, step: int) -> None:
    for name, module in (
        ("unet", unet),
        ("text_encoder", text),
        ("ema_unet", ema_u),
        ("ema_text_encoder", ema_t),
    ):
        module.save_pretrained(ckpt / name, safe_serialization=True)
    (ckpt / "state.json").write_text(json.dumps({"step": step}))
    log_row(WORK / "unet.log", step=step, saved=str(ckpt))


def export(out: Path, ema: bool = True) -> Path:
    """Assemble the standard diffusers directory (fp16 safetensors)."""
    ckpt = WORK / "ckpt"
    tokenizer = CLIPTokenizer.from_pretrained(WORK / "tokenizer")
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(WORK / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(ckpt / ("ema_text_encoder" if ema else "text_encoder")),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_pretrained(ckpt / ("ema_unet" if ema else "unet")),
        scheduler=DPMSolverMultistepScheduler(**SCHEDULE, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    text_encoder_loads_in_float32(out / "text_encoder" / "config.json")
    return out


def copy_vae(source: Path) -> None:
    """Start from the VAE of an existing diffusers folder (the renderer's images have not changed)."""
    vae = AutoencoderKL.from_pretrained(source / "vae" if (source / "vae").is_dir() else source)
    vae.to(torch.float32).save_pretrained(WORK / "vae", safe_serialization=True)
    log_row(WORK / "vae.log", step=0, done=True, copied_from=str(source))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["vae", "unet", "export"])
    ap.add_argument("--from", dest="source", type=Path, default=None, help="vae: copy this folder's VAE")
    ap.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="unet: warm start from this diffusers folder's UNet and text encoder",
    )
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: the stage's own)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("safegen/assets/mini-sd"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.stage == "export":
        print(export(args.out))
        return
    if args.stage == "vae" and args.source:
        copy_vae(args.source)
        return
    data = cached_set(WORK / "train.safetensors", 60000, seed=1)
    if args.stage == "vae":
        train_vae(data, args.minutes, batch=args.batch or 16, resume=args.resume)
    else:
        train_unet(
            data,
            args.minutes,
            args.batch or 64,
            args.lr or 8e-4,
            resume=args.resume,
            init_from=args.init_from,
        )


if __name__ == "__main__":
    main()
