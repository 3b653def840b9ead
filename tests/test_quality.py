"""`safegen bench quality`: FID and CLIP score through torchmetrics with local weights, and what changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from safegen.bench.quality import clip_score, fid
from safegen.cli import main
from safegen.guards import get_guard


@pytest.fixture(scope="module")
def tiny_clip_dir(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP (32 px images, 2-layer towers) with the tiny SD model's tokenizer, saved as a folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_sd_dir / "tokenizer"))
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={**small, "vocab_size": len(tokenizer), "max_position_embeddings": 32},
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip") / "clip"
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def renders(n: int, seed: int) -> list[np.ndarray]:
    from safegen.mini.world import World

    world, rng = World.load(), np.random.default_rng(seed)
    return [np.asarray(world.render(world.sample_scene(rng), rng)) for _ in range(n)]


def test_fid_of_a_set_against_itself_is_zero_and_of_another_set_is_not(tiny_clip_dir):
    images, others = renders(24, 0), [np.full((64, 64, 3), v, np.uint8) for v in range(0, 240, 10)]
    for features in ("mini", f"clip:{tiny_clip_dir}"):
        assert abs(fid(images, images, features)["fid"]) < 1e-3
        assert fid(images, others, features)["fid"] > 1.0


def test_clip_score_is_the_reference_computation(tiny_clip_dir):
    """torchmetrics' CLIPScore on a local folder equals 100 x max(cos, 0) computed here with transformers."""
    from transformers import CLIPModel, CLIPProcessor

    images, captions = renders(4, 1), ["a red circle", "a blue star", "a green square", "a dotted heart"]
    ours = clip_score(images, captions, str(tiny_clip_dir))
    model, processor = CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(tiny_clip_dir)
    inputs = processor(text=captions, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    image, text = (getattr(x, "pooler_output", x) for x in (image, text))
    cos = torch.nn.functional.cosine_similarity(image, text)
    expected = float((100 * cos.clamp(min=0)).mean())
    assert ours["clip_score"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert ours["clip_cosine"] == pytest.approx(ours["clip_score"] / 100)


def test_bench_quality_end_to_end_and_resume(tiny_sd_dir, tiny_clip_dir, tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red bicycle\na red apple on a table\na blue car\na dog in a park\n")
    out = tmp_path / "run"
    args = ["bench", "quality", "--captions", str(captions), "--model", str(tiny_sd_dir), "--guard", "neg",
            "--concept", "red", "--features", f"clip:{tiny_clip_dir}", "--clip", str(tiny_clip_dir),
            "--steps", "2", "--changed-threshold", "0.0", "--device", "cpu", "--out", str(out),
            "--json"]  # fmt: skip
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["n_images"] == 4 and results["reference"] == "base"
    assert results["fid"]["library"]["torchmetrics"] and len(results["fid"]["sha256"]) == 64
    assert results["changed"]["changed_share"] == 1.0  # the negative prompt changes every image a little
    assert 0 < results["changed"]["mean_pixel_distance"] < 1
    assert 0 <= results["clip"]["clip_cosine"] <= 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["features"] == f"clip:{tiny_clip_dir}"
    from safegen.report import write_report

    page = write_report([out], tmp_path / "report.html").read_text()
    assert "Quality (FID" in page and "fid.fid" in page and "changed.changed_share" in page
    references = sorted((out / "reference" / "images").glob("*.png"))
    assert len(references) == 4
    stamps = [p.stat().st_mtime_ns for p in references]
    assert main([*args, "--resume"]) == 0  # nothing made again: the same figures
    assert json.loads(capsys.readouterr().out) == results
    assert [p.stat().st_mtime_ns for p in references] == stamps
    import shutil  # interrupted after the reference images, before the run's own: --resume finishes it

    for child in out.iterdir():
        if child.name != "reference":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    assert main([*args, "--resume"]) == 0
    assert json.loads(capsys.readouterr().out) == results
    assert [p.stat().st_mtime_ns for p in references] == stamps
    folder = tmp_path / "real"  # a folder of real images as the reference
    folder.mkdir()
    from PIL import Image

    for i, picture in enumerate(renders(3, 2)):
        Image.fromarray(picture).save(folder / f"{i}.png")
    plain = ["bench", "quality", "--captions", str(captions), "--model", str(tiny_sd_dir), "--steps", "2",
             "--reference", str(folder), "--features", "mini", "--device", "cpu",
             "--out", str(tmp_path / "r"), "--json"]  # fmt: skip
    assert main(plain) == 0
    real = json.loads(capsys.readouterr().out)
    assert real["fid"]["n_reference"] == 3 and "changed" not in real and "clip" not in real


def test_rows_without_a_guidance_scale_use_the_models_own(tiny_ar_dir, tmp_path, capsys):
    """An AR model's captions are sampled at its own default guidance (its llamagen.json), as
    ``safegen generate`` does, not at Stable Diffusion's 7.5; --cfg still sets every row."""
    import shutil

    model = tmp_path / "ar"
    shutil.copytree(tiny_ar_dir, model)
    spec = json.loads((model / "llamagen.json").read_text())
    (model / "llamagen.json").write_text(json.dumps({**spec, "sampling": {"cfg": 2.5}}))
    base = ["bench", "quality", "--captions", "mini", "--limit", "2", "--model", str(model), "--features",
            "mini", "--device", "cpu", "--json"]  # fmt: skip
    for extra, expected in (([], 2.5), (["--cfg", "4.0"], 4.0)):
        out = tmp_path / f"run{len(extra)}"
        assert main([*base, *extra, "--out", str(out)]) == 0, capsys.readouterr().err
        capsys.readouterr()
        for folder in (out, out / "reference"):
            samples = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
            assert [s["cfg"] for s in samples] == [expected, expected]
        policy = json.loads((out / "manifest.json").read_text())["cfg_policy"]
        assert str(expected) in policy


@pytest.mark.parametrize(
    "extra",
    [
        ["--features", "inception"],
        ["--features", "clip:/no/such/folder"],
        ["--reference", "/no/such/folder"],
        ["--captions", "/no/such/captions.txt"],
    ],
)
def test_bad_inputs_are_one_line_and_write_nothing(tiny_sd_dir, tmp_path, capsys, extra):
    args = ["bench", "quality", "--captions", "smoke", "--model", str(tiny_sd_dir), "--steps", "2",
            "--out", str(tmp_path / "run"), *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bundled_caption_sets():
    from safegen.bench.quality import MINI_TEMPLATES, caption_set
    from safegen.mini.world import World

    smoke, source, expects = caption_set("smoke")
    assert len(smoke) >= 30 and source["set"] == "smoke" and expects is None
    mini, _, expects = caption_set("mini")
    assert len(mini) == len(set(mini)) == len(expects) == 6 * 6 * 5
    assert not set(MINI_TEMPLATES) & set(World.load().all_templates)  # phrasings training never saw
    assert all(e["color"] in text and e["object"] in text for text, e in zip(mini, expects, strict=True))


def test_mini_caption_set_reports_accuracy_on_the_bundled_model(tmp_path, capsys):
    args = ["bench", "quality", "--captions", "mini", "--limit", "6", "--model", "mini", "--steps", "20",
            "--device", "cpu", "--out", str(tmp_path / "run"), "--json"]  # fmt: skip
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results["accuracy"]) == {"object", "color", "texture"}
    assert min(results["accuracy"].values()) >= 0.5  # the bundled model draws held-out phrasings
    assert results["fid"]["fid"] == pytest.approx(0.0, abs=1e-3)  # no guard: the base model's own images
    assert results["changed"]["changed_share"] == 0.0


def test_mini_accuracy_leaves_out_the_captions_that_show_the_concept(tmp_path, capsys):
    from safegen.bench.quality import caption_set, concept_captions

    _, _, expects = caption_set("mini")
    red = concept_captions("red", expects)
    assert sum(red) == 30 and all(e["color"] == "red" for e, s in zip(expects, red, strict=True) if s)
    both = concept_captions("red,circle", expects)
    assert sum(both) == 30 + 30 - 5  # a red circle is one caption per texture
    assert not any(concept_captions("ines-quarry", expects))  # an artist is never captioned: all kept
    assert concept_captions("nudity", expects) is None
    args = ["bench", "quality", "--captions", "mini", "--limit", "6", "--model", "mini", "--steps", "20",
            "--concept", "striped", "--device", "cpu", "--out", str(tmp_path / "run"), "--json"]  # fmt: skip
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    _, _, first = caption_set("mini")
    kept = [e for e in first[:6] if e["texture"] != "striped"]
    assert 0 < len(kept) < 6 and set(results["accuracy_without_concept"]) == {"object", "color", "texture"}
    assert results["n_without_concept"] == len(kept)
    assert min(results["accuracy_without_concept"].values()) >= 0.5  # the unmodified model draws them


def test_a_guard_on_a_bundled_model_takes_its_calibration_as_the_cli_does(tmp_path):
    """run_bench_quality called from Python with sp on the bundled mini judges with the bundled calibration of
    the concept (the thresholds of ``safegen calibrate``), not the option defaults; given options win."""
    from safegen.bench.evaluate import Settings
    from safegen.bench.quality import run_bench_quality
    from safegen.guards import calibrated_options

    calibrated = calibrated_options("sp", "red", "mini")
    assert calibrated["tau"] != get_guard("sp", concept="red").describe()["tau"]
    for options, tau in (({}, calibrated["tau"]), ({"tau": 0.2}, 0.2)):
        out = tmp_path / f"run{len(options)}"
        settings = Settings(
            model="mini", guard="sp", concept="red", steps=8, device="cpu", guard_options=options
        )
        run_bench_quality("mini", settings=settings, limit=2, features="mini", out=out)
        guard = json.loads((out / "manifest.json").read_text())["guard"]
        assert guard["tau"] == tau and guard["presence_tau"] == calibrated["presence_tau"]


def test_inception_weights_are_read_as_plain_tensors_before_anything_unpickles_them(tmp_path):
    """torch-fidelity reads the file with weights_only=False: a file holding more than tensors is refused."""
    from safegen.bench.quality import fid_metric
    from safegen.errors import SafegenError

    pickled = tmp_path / "pt_inception.pth"
    torch.save({"weight": torch.zeros(2), "extra": Path("/etc/passwd")}, pickled)
    with pytest.raises(SafegenError, match="not a plain PyTorch state dict"):
        fid_metric(f"inception:{pickled}")
    plain = tmp_path / "plain.pth"
    torch.save({"weight": torch.zeros(2)}, plain)
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:  # without torch-fidelity a plain file gets the install hint, one line
        with pytest.raises(SafegenError, match="needs torch-fidelity"):
            fid_metric(f"inception:{plain}")
