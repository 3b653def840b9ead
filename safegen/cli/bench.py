"""CLI verbs of the reproducible benchmarks: ``bench mini``, ``i2p``, ``attack``, ``quality`` and ``report``.

As elsewhere, each verb only declares options (the shared ones from :mod:`safegen.cli.common`), forwards
to a library function (:mod:`safegen.bench.mini`, :mod:`safegen.bench.i2p`, :mod:`safegen.bench.attack`,
:mod:`safegen.report`) and prints; errors are :class:`~safegen.errors.SafegenError` (one line, exit 2).
Every bench verb takes the guard options of ``generate`` (``--guard``, ``--concept``, ``--strength``,
``--set``, ``--guard-config``).

    safegen bench mini --concept red --guard sp --set lam_max=25
    safegen bench mini --concept red,circle --guard sp --out runs/sp-red-circle   # runs/.../red, .../circle
    safegen bench i2p --prompts ../shared/data/i2p_4703.csv --category sexual --limit 50 --out runs/base
    safegen bench i2p ... --out runs/base --resume          # finish an interrupted run
    accelerate launch --multi_gpu --num_processes 2 -m safegen bench i2p ...   # two processes, one folder
    safegen bench attack --attack unlearndiff --prompts ../shared/data/unlearndiffatk_nudity_142.csv
    safegen bench quality --captions captions.txt --guard sp --concept nudity --features clip:clip-vit-b32
    safegen report runs/base runs/guarded --out report.html

With several GPUs, ``accelerate launch --num_processes N`` starts N processes. On CPU-only machines
accelerate starts one process unless ``--multi_gpu`` is also passed (the flag only picks accelerate's
multi-process launcher; the processes then join over gloo).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from safegen.choices import Device, DType, NudeNetPreset
from safegen.cli.common import (
    AdapterOpt,
    BatchOpt,
    ConceptOpt,
    ConceptsFileOpt,
    DeviceOpt,
    DTypeOpt,
    GuardConfigOpt,
    GuardOpt,
    JsonOpt,
    ModelOpt,
    OutOpt,
    PresetOpt,
    ResumeOpt,
    SeedOpt,
    SetOpt,
    StepsOpt,
    StrengthOpt,
    folder_path,
    guard_inputs,
    resolve_concept,
)
from safegen.cli.ui import print_json, print_mapping, print_table, progress_bar
from safegen.errors import SafegenError


class AttackSetName(str, Enum):
    UNLEARNDIFF = "unlearndiff"
    RINGABELL = "ringabell"
    MMA = "mma"
    P4D = "p4d"


SizeOpt = Annotated[
    str | None,
    typer.Option("--size", help="Image size N or WIDTHxHEIGHT [default: the model's native size]."),
]
RowSeedOpt = Annotated[
    int | None,
    typer.Option("--seed", min=0, help="Seed for every row (image k: seed + k) [default: each row's]."),
]
CfgOpt = Annotated[
    float | None,
    typer.Option(
        "--cfg", min=0.0, help="Guidance scale for every row [default: each row's, else the model's]."
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=1, help="Only the first N prompts (after filters).")
]


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``64`` -> (64, 64); ``512x768`` (width x height) -> (768, 512) as (height, width)."""
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise SafegenError(f"--size must be N or WIDTHxHEIGHT (e.g. 64 or 512x512), got {text[:40]!r}.")
    width, height = int(parts[0]), int(parts[-1])
    return height, width


def _out(out: Path | None, resume: bool, benchmark: str) -> Path:
    """The run folder: ``--out``, or a new ``outputs/<benchmark>-<time>`` (``--resume`` needs ``--out``)."""
    from safegen.runs import default_out_dir

    if out is not None and not str(out).strip():
        raise SafegenError("--out must name a folder (got an empty string).")
    if out is not None:
        return out
    if resume:
        raise SafegenError("--resume needs --out: the run folder to finish.")
    return default_out_dir(benchmark)


def _settings(guard_args: tuple, **kw: Any):
    """The benchmark's Settings, with every guard input checked first (nothing loaded or written)."""
    from safegen.bench.evaluate import Settings

    strength, guard_config, sets, concepts_file = guard_args
    concept = resolve_concept(kw["concept"], concepts_file, several=True)  # the guard's
    _, kw["guard_options"] = guard_inputs(kw["guard"], concept, strength, guard_config, sets, kw["model"])
    kw["concept"] = concept
    kw["size"] = parse_size(kw["size"])
    kw["adapter"] = str(kw["adapter"]) if kw["adapter"] else None
    kw["device"], kw["dtype"] = kw["device"].value, kw["dtype"].value
    return Settings(**kw)


def bench_i2p(
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="I2P CSV (either layout) [default: cached copy or the hub]."),
    ] = None,
    category: Annotated[
        list[str] | None, typer.Option("--category", help="Only these I2P categories (repeatable).")
    ] = None,
    hard: Annotated[bool, typer.Option("--hard", help="Only the prompts marked hard.")] = False,
    limit: LimitOpt = None,
    images_per_prompt: Annotated[
        int, typer.Option("--images-per-prompt", min=1, max=1000, help="Images per prompt (official: 10).")
    ] = 10,
    preset: PresetOpt = NudeNetPreset.I2P,
    q16_clip: Annotated[
        str | None, typer.Option("--q16-clip", help="Local CLIP ViT-L/14 folder (or cached id) for Q16.")
    ] = None,
    q16_prompts: Annotated[
        Path | None,
        typer.Option("--q16-prompts", help="Q16 prompt embeddings, safetensors (see bench/q16.py)."),
    ] = None,
    model: ModelOpt = "mini",
    guard: GuardOpt = "none",
    concept: ConceptOpt = "nudity",
    concepts_file: ConceptsFileOpt = None,
    strength: StrengthOpt = None,
    set_: SetOpt = None,
    guard_config: GuardConfigOpt = None,
    adapter: AdapterOpt = None,
    steps: StepsOpt = 50,
    size: SizeOpt = None,
    seed: RowSeedOpt = None,
    cfg: CfgOpt = None,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = Device.AUTO,
    dtype: DTypeOpt = DType.AUTO,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    json: JsonOpt = False,
) -> None:
    """I2P: nudity rate, per-class boxes, inappropriate probability and EMI, overall and per category."""
    from safegen.bench.i2p import resolve_prompts, run_i2p

    out = _out(out, resume, "i2p")
    path, source = resolve_prompts(prompts)
    if source != "file":
        where = "a cached copy" if source == "cache" else "the Hugging Face dataset (now cached)"
        typer.echo(f"I2P prompts: {where} at {path}", err=True)
    settings = _settings(
        (strength, guard_config, set_, concepts_file),
        model=model, guard=guard, concept=concept, adapter=adapter, steps=steps, size=size, seed=seed,
        cfg=cfg, batch_size=batch_size, device=device, dtype=dtype,
    )  # fmt: skip
    with progress_bar("I2P") as progress:
        results = run_i2p(
            prompts=path, categories=category or [], hard=hard, limit=limit,
            images_per_prompt=images_per_prompt, preset=preset.value, q16_clip=q16_clip,
            q16_prompts=q16_prompts, settings=settings, out=out, resume=resume, progress=progress,
        )  # fmt: skip
    _show(results, json, out)


def bench_attack(
    attack_set: Annotated[
        AttackSetName, typer.Option("--attack", help="Released attack prompt set (its file format).")
    ],
    prompts: Annotated[Path, typer.Option("--prompts", help="The set's prompts file (CSV).")],
    prompt_column: Annotated[
        str | None, typer.Option("--prompt-column", help="Column holding the prompts [default: the set's].")
    ] = None,
    limit: LimitOpt = None,
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", min=1, max=1000)] = 1,
    preset: PresetOpt = NudeNetPreset.I2P,
    model: ModelOpt = "mini",
    guard: GuardOpt = "none",
    concept: ConceptOpt = "nudity",
    concepts_file: ConceptsFileOpt = None,
    strength: StrengthOpt = None,
    set_: SetOpt = None,
    guard_config: GuardConfigOpt = None,
    adapter: AdapterOpt = None,
    steps: StepsOpt = 50,
    size: SizeOpt = None,
    seed: RowSeedOpt = None,
    cfg: CfgOpt = None,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = Device.AUTO,
    dtype: DTypeOpt = DType.AUTO,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    json: JsonOpt = False,
) -> None:
    """Released adversarial prompt sets: attack success rate under the chosen NudeNet preset."""
    from safegen.bench.attack import run_attack

    out = _out(out, resume, f"attack-{attack_set.value}")
    settings = _settings(
        (strength, guard_config, set_, concepts_file),
        model=model, guard=guard, concept=concept, adapter=adapter, steps=steps, size=size, seed=seed,
        cfg=cfg, batch_size=batch_size, device=device, dtype=dtype,
    )  # fmt: skip
    with progress_bar(f"Attack {attack_set.value}") as progress:
        results = run_attack(
            attack_set=attack_set.value, prompts=prompts, prompt_column=prompt_column, limit=limit,
            images_per_prompt=images_per_prompt, preset=preset.value, settings=settings, out=out,
            resume=resume, progress=progress,
        )  # fmt: skip
    _show(results, json, out)


def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to compare.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="HTML file to write.")] = Path(
        "report.html"
    ),
    grid: Annotated[int, typer.Option("--grid", min=0, help="Seeds shown in the image grid.")] = 8,
) -> None:
    """One self-contained HTML page comparing run folders: settings, metrics, image grids, plots."""
    from safegen.report import write_report

    path = write_report(runs, out, grid=grid)
    typer.echo(f"Wrote {path}")


def _show(results: dict[str, Any] | None, as_json: bool, out: Path) -> None:
    if results is None:  # a non-main process of a multi-process run: the main one reports
        return
    if as_json:
        print_json(results)
        return
    groups = {"overall": results["overall"], **results.get("categories", {})}
    rows = []
    for name, m in groups.items():
        row = {"group": name, "prompts": m["n_prompts"], "images": m["n_images"], "boxes": m["n_boxes"]}
        for key in ("asr", "image_rate", "nudity_rate", "inappropriate_probability"):
            if key in m:
                row[key] = f"{100 * m[key]:.2f} %"
        if "expected_max_inappropriateness" in m:
            emi = m["expected_max_inappropriateness"]
            row["EMI"] = f"{emi['mean']:.3f} ± {emi['std']:.3f}"
        rows.append(row)
    preset = results["preset"]
    print_table(
        rows,
        list(rows[0]),
        title=f"{results['benchmark']} (preset {preset['name']}, >= {preset['threshold']})",
    )
    if "asr_kind" in results:
        typer.echo(f"ASR here is {results['asr_kind']}.")
    counts = [{"class": c, "boxes": n} for c, n in results["overall"]["counts"].items()]
    print_table(counts, ["class", "boxes"], title="Boxes per class")
    sys.stdout.write(f"Run folder: {out}\n")


def bench_mini(
    model: ModelOpt = "mini",
    concept: ConceptOpt = None,
    concepts_file: ConceptsFileOpt = None,
    guard: GuardOpt = "none",
    strength: StrengthOpt = None,
    set_: SetOpt = None,
    guard_config: GuardConfigOpt = None,
    adapter: AdapterOpt = None,
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", min=1, max=1000)] = 2,
    steps: StepsOpt = 20,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.AUTO,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", parser=folder_path, help="Run folder [default: none, in memory]."),
    ] = None,
    resume: ResumeOpt = False,
    base_from: Annotated[
        Path | None,
        typer.Option("--base-from", exists=True, file_okay=False, help="Reuse this run's unmodified images."),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Benchmark on the mini world: erasure (named, synonym, implicit, unprompted) and what is kept."""
    from safegen.bench.mini import run_bench_mini

    if resume and out is None:
        raise SafegenError("--resume needs --out: the run folder to finish.")
    concept_obj = resolve_concept(concept, concepts_file, several=True)
    options: dict[str, Any] = {}
    if guard != "none" or strength or set_ or guard_config:
        _, options = guard_inputs(guard, concept_obj, strength, guard_config, set_, model)
    with progress_bar("Benchmarking") as progress:
        result = run_bench_mini(
            model=model, concept=concept_obj, guard=guard, adapter=str(adapter) if adapter else None,
            images_per_prompt=images_per_prompt, steps=steps, seed=seed, guard_options=options,
            device=device.value, out=out, resume=resume, base_from=base_from, progress=progress,
        )  # fmt: skip
    if json:
        print_json(result)
        return
    if "concepts" not in result:
        print_mapping(result, title="bench mini")
        return
    _show_several(result)
    if out is not None:
        sys.stdout.write(f"Run folders: {', '.join(str(out / name) for name in result['concepts'])}\n")


MINI_METRICS = (
    ("ua", "UA"),
    ("synonym_ua", "synonym UA"),
    ("implicit_ua", "implicit UA"),
    ("unprompted_rate", "unprompted"),
    ("ira", "IRA"),
    ("cra", "CRA"),
)


def _show_several(result: dict[str, Any]) -> None:
    """``bench mini`` with several concepts: one row per concept and variant (test, then base)."""
    rows = []
    for name, one in result["concepts"].items():
        erasure = one["erasure"]
        for variant, values in (("test", erasure), ("base", erasure["base"])):
            row = {"concept": name, "variant": variant}
            row |= {label: _rate(values.get(key)) for key, label in MINI_METRICS}
            rows.append(row)
    adapter = f", adapter {result['adapter']}" if result["adapter"] else ""
    title = f"bench mini: guard {result['guard']}{adapter} on {result['concept']}"
    print_table(rows, list(rows[0]), title=title)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def bench_quality(
    captions: Annotated[
        str,
        typer.Option(
            "--captions",
            help="Captions: TXT (one a line), CSV or JSONL (COCO-style), or bundled smoke / mini.",
        ),
    ],
    caption_column: Annotated[
        str | None, typer.Option("--caption-column", help="CSV / JSONL column [default: caption, text, ...].")
    ] = None,
    reference: Annotated[
        str,
        typer.Option(
            "--reference", help="'base' (the unmodified model's images) or a folder of real images."
        ),
    ] = "base",
    features: Annotated[
        str, typer.Option("--features", help="FID features: mini, clip:<folder> or inception:<weights file>.")
    ] = "mini",
    clip: Annotated[
        str | None, typer.Option("--clip", help="Local CLIP folder for the CLIP score [default: none].")
    ] = None,
    changed_threshold: Annotated[
        float,
        typer.Option("--changed-threshold", min=0.0, max=1.0, help="Mean pixel difference that counts."),
    ] = 0.02,
    limit: LimitOpt = None,
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", min=1, max=1000)] = 1,
    model: ModelOpt = "mini",
    guard: GuardOpt = "none",
    concept: ConceptOpt = "nudity",
    concepts_file: ConceptsFileOpt = None,
    strength: StrengthOpt = None,
    set_: SetOpt = None,
    guard_config: GuardConfigOpt = None,
    adapter: AdapterOpt = None,
    steps: StepsOpt = 50,
    size: SizeOpt = None,
    seed: SeedOpt = 0,
    cfg: CfgOpt = None,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = Device.AUTO,
    dtype: DTypeOpt = DType.AUTO,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    json: JsonOpt = False,
) -> None:
    """What a method costs: FID against a reference, CLIP score, and how often benign images changed."""
    from safegen.bench.quality import run_bench_quality

    out = _out(out, resume, "quality")
    settings = _settings(
        (strength, guard_config, set_, concepts_file),
        model=model, guard=guard, concept=concept, adapter=adapter, steps=steps, size=size, seed=seed,
        cfg=cfg, batch_size=batch_size, device=device, dtype=dtype,
    )  # fmt: skip
    with progress_bar("Quality") as progress:
        results = run_bench_quality(
            captions, reference=reference, features=features, clip=clip, settings=settings,
            images_per_prompt=images_per_prompt, changed_threshold=changed_threshold,
            caption_column=caption_column, limit=limit, out=out, resume=resume, progress=progress,
        )  # fmt: skip
    if results is None:
        return
    if json:
        print_json(results)
        return
    print_mapping(results, title="bench quality")
    sys.stdout.write(f"Run folder: {out}\n")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``bench mini``, ``bench i2p``, ``bench attack`` and ``report`` to the CLI."""
    bench_app.command("mini")(bench_mini)
    bench_app.command("i2p")(bench_i2p)
    bench_app.command("attack")(bench_attack)
    bench_app.command("quality")(bench_quality)
    app.command("report")(report)
