"""Peak memory of a VCE step against a plain LoRA NLL fine-tuning step on the same AR model and batch.

    python benchmarks/bench_vce_memory.py                         # random GPT of mini-ar's shapes, CPU
    python benchmarks/bench_vce_memory.py --model DIR --quick     # any LlamaGen / Janus folder, fast
    python benchmarks/bench_vce_memory.py --device cuda --model path/to/llamagen --pairs 8 --json out.json

Both steps take the same batch: B pairs = 2B token sequences (safe and unsafe images of one prompt each),
the same LoRA (``vce.add_ar_lora``), AdamW and dtype. The plain step fine-tunes on the 2B sequences with
the token-level NLL; the VCE step (``TokenLogProbs`` + ``losses.vce_loss``, token drop 0.1) adds the
reference pass (the same GPT with its adapters disabled, under ``no_grad``). The retain term is left out
of both (it would add the same R sequences to each). Target: VCE <= 1.3x plain.

Each mode runs in its own fresh process; how the peak is read is described in ``benchmarks/helpers.py``
(shared with ``bench_dpo_memory.py``). Without ``--model`` a random LlamaGen with the bundled mini-ar's
shapes (``--preset mini``) is built in a temporary folder; ``--quick`` measures one step in one process
per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def child(args: argparse.Namespace) -> dict:
    """One mode in this process: set up, then measure ``--steps`` optimiser steps."""
    import torch
    from helpers import measure

    from safegen.loader import load_model
    from safegen.recipes.losses import average_logprob, token_keep_mask, vce_loss
    from safegen.recipes.training import adapters_disabled
    from safegen.recipes.vce import TokenLogProbs, add_ar_lora

    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype="fp32")
    for part in model.backbone.modules():
        part.requires_grad_(False)
    peft_model, params = add_ar_lora(model, args.rank, float(args.rank), "attn", seed=0)
    policy = TokenLogProbs(model)
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(model.vq.codebook_size, (2 * args.pairs, model.n_tokens), generator=gen)  # (2B, N)
    prompts = [f"a red circle number {i}" for i in range(args.pairs)] * 2

    def step() -> None:
        keep = token_keep_mask(len(tokens), model.n_tokens, 0.1, gen)
        if args.mode == "dpo":
            with torch.no_grad(), adapters_disabled(peft_model):
                ref = average_logprob(model.token_logprobs(prompts, tokens), keep)  # (2B,)
            avg = average_logprob(policy(prompts, tokens), keep)  # (2B,)
            loss = vce_loss(*avg.chunk(2), *ref.chunk(2), beta=5.0).loss
        else:  # plain LoRA fine-tuning: the NLL of the same 2B sequences
            loss = -average_logprob(policy(prompts, tokens), keep).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"mode": args.mode, **measure(step, args.steps, args.device == "cuda")}


def main() -> None:
    from helpers import compare, forwarded, parser, report, run_modes

    ap = parser(__doc__, "LlamaGen or Janus folder [default: a random LlamaGen of --preset's shapes]")
    ap.add_argument("--preset", default="mini", choices=["tiny", "mini"], help="shapes of the random model")
    ap.add_argument("--quick", action="store_true", help="one step, one process per mode (a smoke run)")
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.steps, args.repeats = 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        named = args.model
        if args.model is None:
            from helpers import save_random_llamagen

            args.model = str(save_random_llamagen(Path(tmp) / "random", preset=args.preset))
        rows = run_modes(__file__, forwarded(args), args.threads, args.repeats)
    result = {
        "model": named or f"random LlamaGen, {args.preset} shapes",
        "device": args.device,
        "pairs": args.pairs,
        "sequences_per_step": 2 * args.pairs,
        "rank": args.rank,
        **compare(rows),
        "target": "ratio <= 1.3",
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
