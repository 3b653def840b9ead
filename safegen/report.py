"""``safegen report``: one self-contained HTML page comparing run folders.

    safegen report runs/base runs/guarded runs/adapter --out report.html

The page holds: every run's settings side by side (rows where runs differ are marked), the metric tables
side by side, plots as inline SVG (boxes per NudeNet class for I2P / attack runs; erasure vs retention
for ``bench mini`` runs), and an image grid of the same (prompt, seed) across runs (base vs guard vs
adapter). Images are embedded as base64 thumbnails; nothing is loaded from elsewhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safegen.errors import SafegenError
from safegen.runs import MANIFEST, RESULTS, flatten, read_json

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7")
THUMB = 160  # px, longest side of grid thumbnails
CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}
th{background:#f3f3f3} tr.diff td{background:#fff6d5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid img{display:block;width:128px;height:auto;image-rendering:pixelated}
.flag{outline:3px solid #e15759} .small{font-size:11px;color:#555;max-width:160px}
"""


@dataclass
class Run:
    """A run folder as read back: its name, manifest, results and samples."""

    name: str
    path: Path
    manifest: dict[str, Any]
    results: dict[str, Any]
    samples: list[dict]

    @property
    def kind(self) -> str:
        return str(self.manifest.get("benchmark", "?"))


def load_run(path: str | Path) -> Run:
    """Read a run folder, checking the shape of what the page reads.

    Raises:
        SafegenError: not a folder, no manifest, no results yet (unfinished: run it with --resume), files
            of the wrong shape, or a sample whose image lies outside the folder.
    """
    from safegen.runs import read_lines

    path = Path(path).expanduser()
    if not (path / MANIFEST).is_file():
        raise SafegenError(f"{path} is not a run folder (no {MANIFEST}).")
    if not (path / RESULTS).is_file():
        raise SafegenError(f"{path} has no {RESULTS} yet; finish it with the same command and --resume.")
    manifest, results = read_json(path / MANIFEST), read_json(path / RESULTS)
    for name, value in ((MANIFEST, manifest), (RESULTS, results)):
        if not isinstance(value, dict):
            raise SafegenError(f"{path / name} is not a JSON object; the run folder is damaged.")
    for key in ("overall", "accuracy", "erasure", "config"):
        container = results if key != "config" else manifest
        if container.get(key) is not None and not isinstance(container[key], dict):
            raise SafegenError(f"{path}: '{key}' is not an object; the run folder is damaged.")
    samples = read_lines(path / "samples.jsonl", repair=False) if (path / "samples.jsonl").is_file() else []
    root = path.resolve()
    for number, sample in enumerate(samples, start=1):
        where = f"{path / 'samples.jsonl'} line {number}"
        if not isinstance(sample, dict) or not isinstance(sample.get("path", ""), str):
            raise SafegenError(f"{where} is not a sample record; the run folder is damaged.")
        if "path" in sample and not (path / sample["path"]).resolve().is_relative_to(root):
            raise SafegenError(f"{where} points outside the run folder ({sample['path'][:60]!r}); not read.")
    return Run(path.name, path, manifest, results, samples)


def write_report(paths: Sequence[str | Path], out: str | Path = "report.html", grid: int = 8) -> Path:
    """Read the run folders and write the HTML page; returns its path.

    Raises:
        SafegenError: a bad run folder (see :func:`load_run`), or ``out`` is a folder or lies inside one of
            the run folders (a report never writes over a run's files).
    """
    if not paths:
        raise SafegenError("Give at least one run folder.")
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = str(r.path)
    out = Path(out).expanduser()
    if out.is_dir():
        raise SafegenError(f"--out {out} is a folder; give an HTML file name.")
    for r in runs:
        if out.resolve().is_relative_to(r.path.resolve()):
            raise SafegenError(
                f"--out {out} lies inside the run folder {r.path}; write the report elsewhere."
            )
    try:
        page = render(runs, grid)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SafegenError(
            f"A run's results have an unexpected shape ({type(exc).__name__}: {exc})."
        ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def render(runs: Sequence[Run], grid: int = 8) -> str:
    """The whole page as a string."""
    body = [
        f"<h1>safegen report: {len(runs)} run{'s' if len(runs) > 1 else ''}</h1>",
        "<h2>Metrics</h2>",
        metrics_tables(runs),
    ]
    if grid:
        body += ["<h2>Images: same prompt and seed across runs</h2>", image_grid(runs, grid)]
    body += [
        "<h2>Plots</h2>",
        plots(runs),
        "<details><summary><h2 style='display:inline'>Settings</h2> (rows that differ between runs are "
        "highlighted)</summary>",
        settings_table(runs),
        "</details>",
    ]
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>safegen report</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


# --------------------------------------------------------------------------- tables
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], diff: bool = False) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    lines = []
    for row in rows:
        cells = [_cell(v) for v in row]
        differs = diff and len({c for c in cells[1:]}) > 1
        tds = "".join(
            f"<td class='num'>{c}</td>" if isinstance(v, (int, float)) else f"<td>{c}</td>"
            for v, c in zip(row, cells, strict=True)
        )
        lines.append(f"<tr{' class=diff' if differs else ''}>{tds}</tr>")
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value, ensure_ascii=False))
    return html.escape(str(value))


def _settings(run: Run) -> dict[str, Any]:
    m = run.manifest
    out = {"benchmark": run.kind, **{f"config.{k}": v for k, v in flatten(m.get("config", {})).items()}}
    for key in ("model.source", "device", "image_size.height", "image_size.width", "image_size.source"):
        out[key] = flatten(m).get(key)
    out["guard (as run)"] = m.get("guard")
    git = m.get("git") or {}
    out["git commit"] = (git.get("commit", "")[:12] + (" (dirty)" if git.get("dirty") else "")) or None
    for name, version in (m.get("versions") or {}).items():
        out[f"version.{name}"] = version
    out["created"] = m.get("created")
    out["command"] = " ".join(m.get("command") or [])
    return out


def settings_table(runs: Sequence[Run]) -> str:
    """Every setting of every run, one column per run; rows that differ between runs are marked."""
    per_run = [_settings(r) for r in runs]
    keys = list(dict.fromkeys(k for s in per_run for k in s))
    rows = [[k, *(s.get(k) for s in per_run)] for k in keys]
    return _table(["setting", *(r.name for r in runs)], rows, diff=len(runs) > 1)


def _pct(x: Any) -> Any:
    return f"{100 * x:.2f} %" if isinstance(x, (int, float)) else None


def metrics_tables(runs: Sequence[Run]) -> str:
    names = [r.name for r in runs]
    parts = []
    benches = [r for r in runs if "overall" in r.results]
    if benches:
        rows = []
        for key in ("n_prompts", "n_images", "nudity_rate", "q16_rate", "inappropriate_probability", "asr"):
            if any(key in r.results["overall"] for r in benches):
                fmt = _pct if key not in ("n_prompts", "n_images") else (lambda x: x)
                rows.append([key, *(fmt(r.results["overall"].get(key)) for r in benches)])
        emi = [r.results["overall"].get("expected_max_inappropriateness") for r in benches]
        if any(emi):
            rows.append(
                ["EMI (mean ± std)", *(f"{e['mean']:.3f} ± {e['std']:.3f}" if e else None for e in emi)]
            )
        rows.append(["boxes", *(r.results["overall"].get("n_boxes") for r in benches)])
        rows.append(["preset", *(_preset(r) for r in benches)])
        parts += ["<h3>Overall</h3>", _table(["metric", *(r.name for r in benches)], rows)]
        classes = list(dict.fromkeys(c for r in benches for c in r.results["overall"].get("counts", {})))
        counts = [[c, *(r.results["overall"]["counts"].get(c) for r in benches)] for c in classes]
        parts += ["<h3>Boxes per class</h3>", _table(["class", *(r.name for r in benches)], counts)]
        cats = list(dict.fromkeys(c for r in benches for c in r.results.get("categories", {})))
        if cats:
            rows = []
            for c in cats:
                cell = [r.results.get("categories", {}).get(c) for r in benches]
                rows.append([c, *(_cat(m) for m in cell)])
            header = ["category: inappropriate / nudity (images)", *(r.name for r in benches)]
            parts += ["<h3>Per category</h3>", _table(header, rows)]
    attacks = [r for r in runs if r.kind == "attack" and "post_asr" in r.results]
    if attacks:
        keys = ("attack", "concept", "guard", "adapter", "n_prompts", "named_asr", "pre_asr", "post_asr")
        rows = [[k, *(r.results.get(k) for r in attacks)] for k in keys]
        rows.append(["s / attacked prompt", *(r.results.get("seconds_per_attacked_prompt") for r in attacks)])
        parts += ["<h3>Attacks (ASR: share of prompts shown the concept)</h3>"]
        parts += [_table(["metric", *(r.name for r in attacks)], rows)]
    minis = [r for r in runs if r.kind == "mini"]
    if minis:
        flat = [flatten({k: r.results.get(k) for k in ("accuracy", "erasure")}) for r in minis]
        keys = list(dict.fromkeys(k for f in flat for k in f))
        rows = [[k, *(f.get(k) for f in flat)] for k in keys]
        parts += ["<h3>Mini world</h3>", _table(["metric", *(r.name for r in minis)], rows)]
    quality = [r for r in runs if r.kind == "quality" and "fid" in r.results]
    if quality:
        parts_of = ("n_images", "accuracy", "fid", "clip", "changed")
        flat = [flatten({k: r.results.get(k) for k in parts_of}) for r in quality]
        keys = [k for k in dict.fromkeys(k for f in flat for k in f) if not k.endswith(("sha256", "scale"))]
        rows = [[k, *(f.get(k) for f in flat)] for k in keys]
        parts += ["<h3>Quality (FID, CLIP score, changed images)</h3>"]
        parts += [_table(["metric", *(r.name for r in quality)], rows)]
    return "".join(parts) or f"<p>No metrics in {', '.join(map(html.escape, names))}.</p>"


def _preset(run: Run) -> str:
    p = run.results.get("preset", {})
    return f"{p.get('name')} ({len(p.get('classes', []))} classes, >= {p.get('threshold')}, {p.get('unit')})"


def _cat(m: dict | None) -> str | None:
    if not m:
        return None
    return f"{_pct(m['inappropriate_probability'])} / {_pct(m['nudity_rate'])} ({m['n_images']})"


# --------------------------------------------------------------------------- plots (inline SVG)
def plots(runs: Sequence[Run]) -> str:
    parts = []
    benches = [r for r in runs if "overall" in r.results and r.results["overall"].get("counts")]
    if benches:
        series = {r.name: r.results["overall"]["counts"] for r in benches}
        parts += ["<h3>Boxes per NudeNet class</h3>", bar_chart(series)]
    points = []
    for r in runs:
        erasure = r.results.get("erasure") if r.kind == "mini" else None
        if erasure:
            points.append((r.name, _retention(erasure), erasure["ua"]))
            if erasure.get("base"):
                points.append((f"{r.name} (base)", _retention(erasure["base"]), erasure["base"]["ua"]))
    if points:
        parts += ["<h3>Erasure vs retention (bench mini)</h3>", scatter(points)]
    return "".join(parts) or "<p>Nothing to plot.</p>"


def _retention(erasure: dict) -> float:
    """Retention: the mean of in-domain (IRA) and cross-domain (CRA) retain accuracy."""
    return (erasure["ira"] + erasure["cra"]) / 2


def bar_chart(series: dict[str, dict[str, float]], width: int = 900, height: int = 260) -> str:
    """Grouped bars: one group per class, one bar per run; the legend sits right of the plot."""
    classes = list(dict.fromkeys(c for s in series.values() for c in s))
    top = max([v for s in series.values() for v in s.values()] + [1])
    left, plot_h = 40, height - 110  # room below for the rotated class names
    right = width - 220  # the plot ends here; the legend takes the rest
    group_w = (right - left) / max(len(classes), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='10'>"]
    out.append(f"<line x1='{left}' y1='{20 + plot_h}' x2='{right}' y2='{20 + plot_h}' stroke='#888'/>")
    out.append(f"<text x='2' y='24'>{top:g}</text><text x='2' y='{20 + plot_h}'>0</text>")
    for i, cls in enumerate(classes):
        x0 = left + i * group_w + group_w * 0.1
        for j, (name, values) in enumerate(series.items()):
            v = values.get(cls, 0)
            h = plot_h * v / top
            x, y = x0 + j * bar_w, 20 + plot_h - h
            tip = html.escape(f"{name}: {cls} {v}")
            out.append(
                f"<rect x='{x:.1f}' y='{y:.1f}' width='{bar_w:.1f}' height='{h:.1f}' "
                f"fill='{PALETTE[j % len(PALETTE)]}'><title>{tip}</title></rect>"
            )
            if v:
                out.append(f"<text x='{x + bar_w / 2:.1f}' y='{y - 2:.1f}' text-anchor='middle'>{v:g}</text>")
        label = html.escape(cls.replace("_EXPOSED", "").lower())
        tx, ty = x0 + group_w * 0.4, 28 + plot_h
        out.append(f"<text x='{tx:.1f}' y='{ty}' transform='rotate(35 {tx:.1f} {ty})'>{label}</text>")
    out.append(_legend(list(series), right + 10, 20))
    out.append("</svg>")
    return "".join(out)


def scatter(points: list[tuple[str, float, float]], size: int = 320) -> str:
    """Erasure (UA, y) against retention (x), both 0..1; higher is better on both axes."""
    pad = 40
    span = size - 2 * pad
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{size + 200}' height='{size}' font-size='10'>"]
    out.append(f"<rect x='{pad}' y='{pad}' width='{span}' height='{span}' fill='none' stroke='#888'/>")
    out.append(f"<text x='{pad}' y='{size - 8}'>retention (mean of IRA, CRA) 0 → 1</text>")
    out.append(f"<text x='4' y='{pad - 8}'>erasure (UA) 1</text><text x='4' y='{pad + span}'>0</text>")
    for k, (name, x, y) in enumerate(points):
        cx, cy = pad + span * x, pad + span * (1 - y)
        color = PALETTE[k % len(PALETTE)]
        tip = html.escape(f"{name}: retention {x:.3f}, UA {y:.3f}")
        out.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='5' fill='{color}'><title>{tip}</title></circle>")
    out.append(_legend([p[0] for p in points], size + 10, pad))
    out.append("</svg>")
    return "".join(out)


def _legend(names: Sequence[str], x: float, y: float) -> str:
    items = []
    for k, name in enumerate(names):
        yy = y + 14 * k
        items.append(
            f"<rect x='{x}' y='{yy}' width='10' height='10' fill='{PALETTE[k % len(PALETTE)]}'/>"
            f"<text x='{x + 14}' y='{yy + 9}'>{html.escape(name)}</text>"
        )
    return "".join(items)


# --------------------------------------------------------------------------- image grid
def _columns(run: Run) -> dict[str, dict[tuple[str, int], dict]]:
    """A run's grid columns: one per variant (``base`` / ``test`` for bench mini), keyed by (prompt, seed)."""
    cols: dict[str, dict[tuple[str, int], dict]] = {}
    for s in run.samples:
        variant = s.get("variant")
        name = run.name if variant in (None, "test") else f"{run.name} ({variant})"
        cols.setdefault(name, {}).setdefault((s["prompt"], s["seed"]), s)
    return cols


def image_grid(runs: Sequence[Run], n: int) -> str:
    """The first ``n`` (prompt, seed) pairs present in every run, one row each, one column per run."""
    columns: dict[str, tuple[Run, dict]] = {}
    for run in runs:
        for name, samples in _columns(run).items():
            columns[name] = (run, samples)
    if not columns:
        return "<p>No samples.</p>"
    first = next(iter(columns.values()))[1]
    common = [k for k in first if all(k in samples for _, samples in columns.values())][:n]
    if not common:
        return "<p>No (prompt, seed) is shared by all runs.</p>"
    header = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    rows = []
    for prompt, seed in common:
        cells = []
        for run, samples in columns.values():
            s = samples[(prompt, seed)]
            unsafe = s.get("nudenet_unsafe") or (s.get("q16") or {}).get("unsafe") or s.get("success")
            flagged = " class='flag'" if unsafe else ""
            cells.append(f"<td><img{flagged} src='{_thumbnail(run.path / s['path'])}' alt=''></td>")
        label = f"<td class='small'>{html.escape(prompt[:140])}<br>seed {seed}</td>"
        rows.append(f"<tr>{label}{''.join(cells)}</tr>")
    note = (
        "<p class='small'>A red outline marks an image the run's NudeNet preset (or Q16) flagged, or an "
        "attack's successful image (attack runs show their post-attack images).</p>"
    )
    return f"{note}<table class='grid'><tr><th>prompt</th>{header}</tr>{''.join(rows)}</table>"


def _thumbnail(path: Path) -> str:
    """A PNG data URI of the image, shrunk to at most THUMB px (an empty one if the file is missing)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except OSError:
        return "data:,"
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
