"""The hostile-input corpus: bad files a user (or an attacker) might hand safegen, and the CLI calls that use
them. Each case is (id, argv, a fragment of the one-line error); every one must exit with code 2, print one
line on stderr and no traceback, and leave nothing behind (``tests/test_hostile_inputs.py``)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import save_file

from safegen.bundled import BUNDLED


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


CONCEPT = "{name: c1, kind: nsfw, keywords: [x], unsafe_text: x, safe_text: y}"
I2P_HEADER = "prompt,categories,hard,sd_seed,sd_guidance_scale\n"


def write_fixtures(root: Path) -> dict[str, Path]:
    """Every bad (and a few good) input files, written once under ``root``."""
    f: dict[str, Path] = {}

    def text(name: str, content: str | bytes) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        f[name] = path
        return path

    # YAML
    text("aliases.yaml", "a: &x [1, 2]\nb: [*x, *x]\nc: [*x, *x]\n")
    text("laughs.yaml", "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: &c [*b, *b, *b]\nd: [*c, *c, *c]\n")
    text("latin1.yaml", b"tau: 0.2\nname: caf\xe9\n")
    text("list.yaml", "- tau\n- 0.2\n")
    text("notyaml.yaml", "tau: [0.2\n")
    text("strength_list.yaml", "strength: [weak]\n")
    text("unknown_key.yaml", "no_such_option: 1\n")
    text("bad_value.yaml", "tau: high\n")
    text("nested.yaml", "tau: {a: 1}\n")
    # concepts files
    concepts = {
        "c_notyaml.yaml": "concepts: [\n",
        "c_list.yaml": "- a\n",
        "c_notlist.yaml": "concepts: 3\n",
        "c_entry.yaml": "concepts:\n  - 42\n",
        "c_noname.yaml": "concepts:\n  - {kind: nsfw, keywords: [x], unsafe_text: x, safe_text: y}\n",
        "c_badname.yaml": "concepts:\n  - {name: Red Car, kind: nsfw, keywords: [x], unsafe_text: x, safe_text: y}\n",
        "c_extra.yaml": "concepts:\n  - {name: c1, kind: nsfw, keywords: [x], unsafe_text: x, safe_text: y, oops: 1}\n",
        "c_kind.yaml": "concepts:\n  - {name: c1, kind: weird, keywords: [x], unsafe_text: x, safe_text: y}\n",
        "c_nokeywords.yaml": "concepts:\n  - {name: c1, kind: nsfw, keywords: [], unsafe_text: x, safe_text: y}\n",
        "c_keywords.yaml": "concepts:\n  - {name: c1, kind: nsfw, keywords: x, unsafe_text: x, safe_text: y}\n",
        "c_unsafe.yaml": "concepts:\n  - {name: c1, kind: nsfw, keywords: [x], unsafe_text: '', safe_text: y}\n",
        "c_safe.yaml": "concepts:\n  - {name: c1, kind: nsfw, keywords: [x], unsafe_text: x, safe_text: 3}\n",
        "c_preset.yaml": f"concepts:\n  - {CONCEPT[:-1]}, detector: {{nudenet: z}}}}\n",
        "c_axis.yaml": f"concepts:\n  - {CONCEPT[:-1]}, detector: {{mini: {{axis: size, value: big}}}}}}\n",
        "c_value.yaml": f"concepts:\n  - {CONCEPT[:-1]}, detector: {{mini: {{axis: color, value: pink}}}}}}\n",
        "c_artist.yaml": f"concepts:\n  - {CONCEPT[:-1]}, detector: {{mini: {{axis: texture, value: solid, artist: mira voss}}}}}}\n",
        "c_twice.yaml": f"concepts:\n  - {CONCEPT}\n  - {CONCEPT}\n",
        "c_aliases.yaml": "concepts:\n  - &c {name: c1, kind: nsfw, keywords: [x], unsafe_text: x, safe_text: y}\n  - *c\n",
    }
    for name, content in concepts.items():
        text(name, content)
    text(
        "c_latin1.yaml",
        b"concepts:\n  - {name: c1, kind: nsfw, keywords: [caf\xe9], unsafe_text: x, safe_text: y}\n",
    )
    # prompt files
    text("i2p.csv", I2P_HEADER + "a red circle,sexual,0,1,7.5\na blue star,sexual,0,2,7.5\n")
    text("i2p_super.csv", I2P_HEADER + "a red circle,sexual,0,2\u00b2,7.5\n")
    text("i2p_quote.csv", I2P_HEADER + '"a red circle,sexual,0,1,7.5\n')
    text("i2p_fields.csv", I2P_HEADER + "a red circle,sexual,0,1\n")
    text("i2p_cfg.csv", I2P_HEADER + "a red circle,sexual,0,1,100\n")
    text("i2p_cfgword.csv", I2P_HEADER + "a red circle,sexual,0,1,high\n")
    text("i2p_hard.csv", I2P_HEADER + "a red circle,sexual,maybe,1,7.5\n")
    text(
        "i2p_latin1.csv",
        (I2P_HEADER + "a red circle,sexual,0,1,7.5\n").encode() + b"caf\xe9,sexual,0,1,7.5\n",
    )
    text("i2p_noprompt.csv", "text,sd_seed,sd_guidance_scale\nx,1,7.5\n")
    text("i2p_noseed.csv", "prompt,categories\nx,sexual\n")
    text("i2p_dupid.csv", "case_number,prompt,sd_seed,sd_guidance_scale\n1,x,1,7.5\n1,y,1,7.5\n")
    text("i2p_empty.csv", "")
    text("ringabell.csv", "sensitive prompt,normal prompt\na red circle,a circle\n")
    text("prompts.txt", "a striped square\na dotted heart\n")
    text("prompts_bad.jsonl", '{"prompt": "a square"}\n{not json\n')
    text("prompts_list.jsonl", '["a square"]\n')
    text("prompts_nofield.jsonl", '{"text2": "a square"}\n')
    text("prompts_empty.txt", "# only a comment\n\n")
    # images
    text("bomb.png", _png_header(100_000, 100_000))
    text("notimage.png", "not a png at all")
    text("truncated.png", _png_header(64, 64)[:40])
    (root / "imgdir").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "good.png")
    f["good.png"] = root / "good.png"
    (root / "empty_dir").mkdir(exist_ok=True)
    f["empty_dir"] = root / "empty_dir"
    text("notempty/file.txt", "x")
    f["notempty"] = root / "notempty"
    f["a_file"] = text("a_file.txt", "x")
    # adapters
    weights = {"x.lora_A.weight": np.zeros((2, 2), np.float32)}
    for name, config in {
        "ad_list": [1, 2],
        "ad_alpha": {"peft_type": "LORA", "r": 2, "lora_alpha": "lots", "target_modules": ["wo"]},
        "ad_type": {"peft_type": "PREFIX_TUNING", "r": 2, "lora_alpha": 2, "target_modules": ["wo"]},
        "ad_rank": {"peft_type": "LORA", "r": 0, "lora_alpha": 2, "target_modules": ["wo"]},
        "ad_targets": {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": 5},
        "ad_nomatch": {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["nothing_here"]},
    }.items():
        folder = root / name
        folder.mkdir(exist_ok=True)
        (folder / "adapter_config.json").write_text(json.dumps(config))
        import torch

        save_file(
            {k: torch.from_numpy(v) for k, v in weights.items()}, str(folder / "adapter_model.safetensors")
        )
        f[name] = folder
    corrupt = root / "ad_corrupt"
    corrupt.mkdir(exist_ok=True)
    (corrupt / "pytorch_lora_weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    f["ad_corrupt"] = corrupt
    sd_lora = root / "ad_sd"
    sd_lora.mkdir(exist_ok=True)
    import torch

    save_file(
        {"unet.nothing.lora_A.weight": torch.zeros(2, 2)}, str(sd_lora / "pytorch_lora_weights.safetensors")
    )
    f["ad_sd"] = sd_lora
    # model folders
    for name, spec in {
        "ar_list": [1, 2],
        "ar_gpt": {"gpt": [1]},
        "ar_types": {"gpt": {"dim": "big"}},
        "ar_weights": {"gpt": {"weights": 5}},
        "ar_sampling": {"sampling": 3},
    }.items():
        folder = root / name
        folder.mkdir(exist_ok=True)
        raw = json.loads((BUNDLED["mini-ar"].path / "llamagen.json").read_text())
        if isinstance(spec, dict):
            for key, value in spec.items():
                raw[key] = (
                    {**raw[key], **value}
                    if isinstance(value, dict) and isinstance(raw.get(key), dict)
                    else value
                )
        else:
            raw = spec
        (folder / "llamagen.json").write_text(json.dumps(raw))
        for part in ("gpt.safetensors", "vq.safetensors"):
            (folder / part).symlink_to(BUNDLED["mini-ar"].path / part)
        f[name] = folder
    # pairs files (VCE rewriter=file)
    text("pairs_seed.jsonl", '{"prompt": "a red circle", "safe_prompt": "a green circle", "seed": 1e20}\n')
    text(
        "pairs_bigseed.jsonl",
        '{"prompt": "a red circle", "safe_prompt": "a green circle", "seed": 99999999999999999999}\n',
    )
    text("pairs_prompt.jsonl", '{"prompt": 5, "safe_prompt": "a green circle"}\n')
    text("pairs_json.jsonl", '{"prompt": "a red circle", "safe_prompt"\n')
    text(
        "pairs_image.jsonl",
        '{"prompt": "a red circle", "unsafe_image": "notimage.png", "safe_image": "good.png"}\n',
    )
    text("pairs_nosafe.jsonl", '{"prompt": "a red circle"}\n')
    # run folders for report
    for name, files in {
        "run_list": {"manifest.json": "[1]", "results.json": "{}"},
        "run_results": {"manifest.json": '{"benchmark": "i2p"}', "results.json": "[1, 2]"},
        "run_json": {"manifest.json": "{not json", "results.json": "{}"},
        "run_noresults": {"manifest.json": '{"benchmark": "i2p"}'},
        "run_escape": {
            "manifest.json": '{"benchmark": "i2p"}',
            "results.json": "{}",
            "samples.jsonl": '{"key": "a", "prompt": "x", "seed": 0, "path": "../../bomb.png"}\n',
        },
        "run_badline": {
            "manifest.json": '{"benchmark": "i2p"}',
            "results.json": "{}",
            "samples.jsonl": '{not json}\n{"key": "a"}\n',
        },
        "run_overall": {"manifest.json": '{"benchmark": "i2p"}', "results.json": '{"overall": [1]}'},
        "run_ok": {"manifest.json": '{"benchmark": "i2p", "config": {}}', "results.json": "{}"},
    }.items():
        folder = root / name
        folder.mkdir(exist_ok=True)
        for file, content in files.items():
            (folder / file).write_text(content)
        f[name] = folder
    f["missing"] = root / "no_such_file.txt"
    return f


class _AsText(dict):
    """The fixture paths as strings (looked up on demand, so a mapping of names stands in at collection)."""

    def __init__(self, paths: dict[str, Path]) -> None:
        super().__init__()
        self.paths = paths

    def __missing__(self, key: str) -> str:
        return str(self.paths[key])


def cases(f: dict[str, Path], tiny_sd: Path) -> list[tuple[str, list[str], str]]:
    """(id, argv, fragment of the error message). ``OUT`` in argv stands for the case's own output path."""
    s = _AsText(f)
    sp = ["--guard", "sp", "--concept", "red"]
    g = lambda *a: ["generate", "a red circle", *a, "--out", "OUT"]  # noqa: E731
    mini = lambda *a: ["bench", "mini", *a]  # noqa: E731
    i2p = lambda *a: ["bench", "i2p", "--prompts", s["i2p.csv"], *a, "--out", "OUT"]  # noqa: E731
    vce = lambda *a: ["erase", "--method", "vce", "--concept", "red", *a, "--out", "OUT"]  # noqa: E731
    atk = lambda *a: ["attack", "--attack", "unlearndiff", "--concept", "red", *a, "--out", "OUT"]  # noqa: E731
    out = [
        # generate: prompts, numbers, names
        ("gen-no-prompt", ["generate"], "Missing argument"),
        ("gen-empty-prompt", ["generate", "", "--out", "OUT"], "Prompt 0 is empty"),
        ("gen-blank-prompt", ["generate", "   ", "--out", "OUT"], "Prompt 0 is empty"),
        ("gen-tab-prompt", ["generate", "ok", "\t", "--out", "OUT"], "Prompt 1 is empty"),
        ("gen-n-0", g("--n", "0"), "--n"),
        ("gen-n-billion", g("--n", "1000000000"), "--n"),
        ("gen-n-negative", g("--n", "-5"), "--n"),
        ("gen-n-word", g("--n", "abc"), "--n"),
        ("gen-n-float", g("--n", "2.5"), "--n"),
        ("gen-steps-0", g("--steps", "0"), "--steps"),
        ("gen-steps-huge", g("--steps", "5000"), "steps must be in 1..1000"),
        ("gen-cfg-negative", g("--cfg", "-1"), "--cfg"),
        ("gen-cfg-huge", g("--cfg", "1000"), "cfg must be in"),
        ("gen-cfg-nan", g("--cfg", "nan"), "--cfg"),
        ("gen-cfg-inf", g("--cfg", "inf"), "cfg must be in"),
        ("gen-seed-negative", g("--seed", "-1"), "--seed"),
        ("gen-seed-huge", g("--seed", "99999999999999999999999"), "seed must be in"),
        ("gen-batch-0", g("--batch-size", "0"), "--batch-size"),
        ("gen-batch-huge", g("--batch-size", "100000"), "batch_size must be in"),
        ("gen-device", g("--device", "tpu"), "--device"),
        ("gen-device-cuda", g("--device", "cuda"), "no CUDA GPU"),
        ("gen-dtype", g("--dtype", "int8"), "--dtype"),
        ("gen-model-typo", g("--model", "minii"), "Did you mean 'mini'"),
        ("gen-model-missing", g("--model", "/no/such/folder"), "Model folder not found"),
        ("gen-model-empty-dir", g("--model", s["empty_dir"]), "is not a model folder"),
        ("gen-model-file", g("--model", s["a_file"]), "Model folder not found"),
        ("gen-option", g("--no-such-option"), "No such option"),
        ("gen-out-empty", ["generate", "x", "--out", ""], "must name a folder"),
        ("gen-out-file", ["generate", "x", "--out", s["a_file"]], "not a folder"),
        # generate: guards
        ("gen-guard-unknown", g("--guard", "nope"), "Unknown guard 'nope'"),
        ("gen-guard-no-concept", g("--guard", "sp"), "needs a concept"),
        ("gen-guard-not-mini", g("--guard", "sp", "--concept", "nudity"), "only knows the mini world"),
        ("gen-guard-concept-typo", g("--guard", "sp", "--concept", "rde"), "Did you mean 'red'"),
        ("gen-set-range", g(*sp, "--set", "tau=5"), "tau must be in"),
        ("gen-set-key", g(*sp, "--set", "nope=1"), "has no option 'nope'"),
        ("gen-set-form", g(*sp, "--set", "tau"), "KEY=VALUE"),
        ("gen-set-type", g(*sp, "--set", "judge_steps=two"), "judge_steps must be an integer"),
        ("gen-set-bool", g(*sp, "--set", "mask_soft=maybe"), "must be true or false"),
        ("gen-set-choice", g(*sp, "--set", "mask=blob"), "must be one of"),
        ("gen-set-order", g(*sp, "--set", "h_sat=0.1", "--set", "tau=0.3"), "must be greater than tau"),
        ("gen-set-window", g(*sp, "--set", "window_start=0.9", "--set", "window_end=0.1"), "greater than"),
        ("gen-strength", g(*sp, "--strength", "ultra"), "Unknown strength"),
        ("gen-none-strength", g("--strength", "weak"), "takes no --strength"),
        ("gen-none-set", g("--set", "tau=1"), "takes no --strength"),
        ("gen-masks-no-sp", g("--save-masks"), "--save-masks needs --guard sp"),
        ("gen-masks-dlr", g("--guard", "dlr", "--concept", "red", "--save-masks"), "needs --guard sp"),
        ("gen-gc-aliases", g(*sp, "--guard-config", s["aliases.yaml"]), "aliases are not allowed"),
        ("gen-gc-laughs", g(*sp, "--guard-config", s["laughs.yaml"]), "aliases are not allowed"),
        ("gen-gc-latin1", g(*sp, "--guard-config", s["latin1.yaml"]), "not UTF-8"),
        ("gen-gc-list", g(*sp, "--guard-config", s["list.yaml"]), "mapping of option names"),
        ("gen-gc-notyaml", g(*sp, "--guard-config", s["notyaml.yaml"]), "not valid YAML"),
        ("gen-gc-strength-list", g(*sp, "--guard-config", s["strength_list.yaml"]), "must be a name"),
        ("gen-gc-unknown", g(*sp, "--guard-config", s["unknown_key.yaml"]), "has no option"),
        ("gen-gc-value", g(*sp, "--guard-config", s["bad_value.yaml"]), "tau must be a number"),
        ("gen-gc-nested", g(*sp, "--guard-config", s["nested.yaml"]), "tau must be a number"),
        ("gen-gc-missing", g(*sp, "--guard-config", s["missing"]), "does not exist"),
        ("gen-ar-guard", g("--model", "mini-ar", *sp), "acts inside a diffusion loop"),
        ("gen-ar-cfg", g("--model", "mini-ar", "--cfg", "99"), "cfg must be in"),
        # generate: adapters and model folders
        ("gen-adapter-missing", g("--adapter", s["missing"]), "does not exist"),
        ("gen-adapter-empty", g("--adapter", s["empty_dir"]), "not a LoRA adapter folder"),
        ("gen-adapter-list", g("--model", "mini-ar", "--adapter", s["ad_list"]), "JSON object"),
        ("gen-adapter-alpha", g("--model", "mini-ar", "--adapter", s["ad_alpha"]), "lora_alpha"),
        ("gen-adapter-type", g("--model", "mini-ar", "--adapter", s["ad_type"]), "LoRA adapters"),
        ("gen-adapter-rank", g("--model", "mini-ar", "--adapter", s["ad_rank"]), "positive integer"),
        ("gen-adapter-targets", g("--model", "mini-ar", "--adapter", s["ad_targets"]), "target_modules"),
        ("gen-adapter-nomatch", g("--model", "mini-ar", "--adapter", s["ad_nomatch"]), "Cannot load adapter"),
        ("gen-adapter-corrupt", g("--adapter", s["ad_corrupt"]), "Corrupt weights file"),
        ("gen-adapter-kind", g("--model", "mini-ar", "--adapter", s["ad_sd"]), "LoRA for a diffusion model"),
        ("gen-adapter-peft-on-sd", g("--adapter", s["ad_alpha"]), "lora_alpha"),
        ("gen-adapter-sd-nomatch", g("--adapter", s["ad_sd"]), "Cannot load adapter"),
        ("gen-ar-spec-list", g("--model", s["ar_list"]), "must be an object"),
        ("gen-ar-spec-gpt", g("--model", s["ar_gpt"]), "must be an object"),
        ("gen-ar-spec-types", g("--model", s["ar_types"]), "not valid"),
        ("gen-ar-spec-weights", g("--model", s["ar_weights"]), "not valid"),
        ("gen-ar-spec-sampling", g("--model", s["ar_sampling"]), "sampling must be an object"),
        ("gen-concepts-file", g(*sp, "--concepts-file", s["c_extra.yaml"]), "oops"),
        # classify
        ("cls-missing", ["classify", s["missing"]], "No such file or folder"),
        ("cls-empty-dir", ["classify", s["empty_dir"]], "No images"),
        ("cls-not-image", ["classify", s["notimage.png"]], "not an image"),
        ("cls-bomb", ["classify", s["bomb.png"]], "claims more pixels"),
        ("cls-bomb-mini", ["classify", s["bomb.png"], "--classifier", "mini"], "claims more pixels"),
        ("cls-truncated", ["classify", s["truncated.png"], "--classifier", "mini"], "truncated"),
        ("cls-classifier", ["classify", s["good.png"], "--classifier", "q16"], "--classifier"),
        ("cls-preset", ["classify", s["good.png"], "--preset", "x"], "--preset"),
        ("cls-none", ["classify"], "Missing argument"),
        # concepts files (on the concepts verb and on every verb that takes --concept)
        *[
            (f"concepts-{name[2:-5]}", ["concepts", "--concepts-file", s[name]], words)
            for name, words in [
                ("c_notyaml.yaml", "not valid YAML"),
                ("c_list.yaml", "one key 'concepts'"),
                ("c_notlist.yaml", "one key 'concepts'"),
                ("c_entry.yaml", "expected a mapping"),
                ("c_noname.yaml", "missing field(s) name"),
                ("c_badname.yaml", "lowercase letters"),
                ("c_extra.yaml", "unknown field(s) oops"),
                ("c_kind.yaml", "kind must be one of"),
                ("c_nokeywords.yaml", "at least one word"),
                ("c_keywords.yaml", "keywords must be a list"),
                ("c_unsafe.yaml", "unsafe_text must not be empty"),
                ("c_safe.yaml", "safe_text must be a string"),
                ("c_preset.yaml", "nudenet preset must be one of"),
                ("c_axis.yaml", "mini axis must be one of"),
                ("c_value.yaml", "must be one of red"),
                ("c_artist.yaml", "the artist's signature"),
                ("c_twice.yaml", "defined twice"),
                ("c_aliases.yaml", "aliases are not allowed"),
                ("c_latin1.yaml", "not UTF-8"),
            ]
        ],
        ("concepts-missing", ["concepts", "--concepts-file", s["missing"]], "does not exist"),
        ("guards-unknown", ["guards", "nope"], "Unknown guard 'nope'"),
        ("methods-option", ["methods", "--bad"], "No such option"),
        ("models-option", ["models", "--bad"], "No such option"),
        # bench mini
        ("mini-ipp-0", mini("--images-per-prompt", "0"), "--images-per-prompt"),
        ("mini-ipp-huge", mini("--images-per-prompt", "100000000"), "--images-per-prompt"),
        ("mini-concept-real", mini("--concept", "nudity"), "mini world has no concept 'nudity'"),
        ("mini-concept-typo", mini("--concept", "circel"), "Did you mean 'circle'"),
        ("mini-guard-no-concept", mini("--guard", "sp"), "needs a concept"),
        ("mini-resume-no-out", mini("--resume"), "--resume needs --out"),
        ("mini-out-empty", mini("--out", ""), "must name a folder"),
        ("mini-out-notempty", mini("--out", s["notempty"]), "not empty and holds no run"),
        ("mini-out-resume-empty", mini("--resume", "--out", "OUT"), "holds no bench mini run"),
        (
            "mini-base-from",
            mini("--concept", "red", "--guard", "neg", "--base-from", s["empty_dir"]),
            "holds no bench mini run",
        ),
        (
            "mini-ar-guard",
            mini("--model", "mini-ar", "--concept", "red", "--guard", "neg", "--out", "OUT"),
            "diffusion loop",
        ),
        (
            "mini-adapter-kind",
            mini("--concept", "red", "--adapter", s["ad_sd"], "--model", "mini-ar", "--out", "OUT"),
            "LoRA for a diffusion model",
        ),
        ("mini-adapter-empty", mini("--adapter", s["empty_dir"]), "not a LoRA adapter folder"),
        ("mini-steps", mini("--steps", "0"), "--steps"),
        ("mini-seed", mini("--seed", "-1"), "--seed"),
        (
            "mini-set-range",
            mini("--concept", "red", "--guard", "sp", "--set", "lam_max=1000"),
            "lam_max must be in",
        ),
        (
            "mini-gc",
            mini("--concept", "red", "--guard", "dlr", "--guard-config", s["aliases.yaml"]),
            "aliases",
        ),
        ("mini-device", mini("--device", "cuda"), "no CUDA GPU"),
        (
            "mini-concepts-file",
            mini("--concept", "c1", "--concepts-file", s["c_kind.yaml"]),
            "kind must be one of",
        ),
        # bench i2p
        ("i2p-missing", ["bench", "i2p", "--prompts", s["missing"], "--out", "OUT"], "not found"),
        (
            "i2p-noprompt",
            ["bench", "i2p", "--prompts", s["i2p_noprompt.csv"], "--out", "OUT"],
            "no 'prompt' column",
        ),
        ("i2p-noseed", ["bench", "i2p", "--prompts", s["i2p_noseed.csv"], "--out", "OUT"], "no seed column"),
        (
            "i2p-superscript",
            ["bench", "i2p", "--prompts", s["i2p_super.csv"], "--out", "OUT"],
            "not a non-negative integer",
        ),
        ("i2p-quote", ["bench", "i2p", "--prompts", s["i2p_quote.csv"], "--out", "OUT"], "malformed"),
        ("i2p-fields", ["bench", "i2p", "--prompts", s["i2p_fields.csv"], "--out", "OUT"], "malformed row"),
        (
            "i2p-row-cfg",
            ["bench", "i2p", "--prompts", s["i2p_cfg.csv"], "--out", "OUT"],
            "guidance must be in",
        ),
        (
            "i2p-cfg-word",
            ["bench", "i2p", "--prompts", s["i2p_cfgword.csv"], "--out", "OUT"],
            "is not a number",
        ),
        ("i2p-hard", ["bench", "i2p", "--prompts", s["i2p_hard.csv"], "--out", "OUT"], "is not 0 or 1"),
        ("i2p-latin1", ["bench", "i2p", "--prompts", s["i2p_latin1.csv"], "--out", "OUT"], "not UTF-8"),
        ("i2p-dup-id", ["bench", "i2p", "--prompts", s["i2p_dupid.csv"], "--out", "OUT"], "already used"),
        ("i2p-empty", ["bench", "i2p", "--prompts", s["i2p_empty.csv"], "--out", "OUT"], "is empty"),
        ("i2p-category", i2p("--category", "sexaul"), "Did you mean 'sexual'"),
        ("i2p-limit-0", i2p("--limit", "0"), "--limit"),
        ("i2p-ipp-huge", i2p("--images-per-prompt", "1000000000"), "--images-per-prompt"),
        ("i2p-size-superscript", i2p("--size", "2\u00b2"), "--size must be"),
        ("i2p-size-word", i2p("--size", "big"), "--size must be"),
        ("i2p-size-zero", i2p("--size", "0x0"), "must be in 8..8192"),
        ("i2p-size-odd", i2p("--size", "63"), "multiple of 8"),
        ("i2p-cfg", i2p("--cfg", "60"), "--cfg must be in"),
        ("i2p-preset", i2p("--preset", "x"), "--preset"),
        ("i2p-guard-real-concept", i2p("--guard", "sp"), "only knows the mini world"),
        ("i2p-ar-guard", i2p("--model", "mini-ar", *sp), "diffusion loop"),
        (
            "i2p-adapter-kind",
            i2p("--model", "mini-ar", "--adapter", s["ad_sd"]),
            "LoRA for a diffusion model",
        ),
        ("i2p-q16", i2p("--q16-clip", "x"), "Q16 needs both"),
        (
            "i2p-resume-no-out",
            ["bench", "i2p", "--prompts", s["i2p.csv"], "--resume"],
            "--resume needs --out",
        ),
        ("i2p-out-empty", ["bench", "i2p", "--prompts", s["i2p.csv"], "--out", ""], "must name a folder"),
        (
            "i2p-out-notempty",
            ["bench", "i2p", "--prompts", s["i2p.csv"], "--out", s["notempty"]],
            "not empty",
        ),
        ("i2p-hard-none-left", i2p("--hard"), "No prompt is left"),
        ("i2p-seed", i2p("--seed", "-3"), "--seed"),
        ("i2p-set-none", i2p("--set", "tau=1"), "takes no --strength"),
        # bench attack (released prompt sets)
        ("batk-set", ["bench", "attack", "--attack", "x", "--prompts", s["ringabell.csv"]], "--attack"),
        (
            "batk-column",
            ["bench", "attack", "--attack", "mma", "--prompts", s["ringabell.csv"], "--out", "OUT"],
            "no 'adv_prompt' column",
        ),
        (
            "batk-column-name",
            [
                "bench",
                "attack",
                "--attack",
                "ringabell",
                "--prompts",
                s["ringabell.csv"],
                "--prompt-column",
                "nope",
                "--out",
                "OUT",
            ],
            "no 'nope' column",
        ),
        (
            "batk-missing",
            ["bench", "attack", "--attack", "unlearndiff", "--prompts", s["missing"], "--out", "OUT"],
            "not found",
        ),
        (
            "batk-limit",
            ["bench", "attack", "--attack", "ringabell", "--prompts", s["ringabell.csv"], "--limit", "0"],
            "--limit",
        ),
        # erase
        ("erase-guard", ["erase", "--method", "sp", "--concept", "red"], "inference guard"),
        ("erase-typo", ["erase", "--method", "scdpoo", "--concept", "red"], "Did you mean 'scdpo'"),
        ("erase-attack", ["erase", "--method", "unlearndiff", "--concept", "red"], "not an erasure method"),
        ("erase-no-concept", ["erase", "--method", "vce"], "needs --concept"),
        (
            "erase-not-mini",
            ["erase", "--method", "vce", "--concept", "nudity", "--out", "OUT"],
            "mini world has no concept",
        ),
        (
            "erase-scdpo-ar",
            ["erase", "--method", "scdpo", "--concept", "red", "--model", "mini-ar", "--out", "OUT"],
            "from diffusion models",
        ),
        (
            "erase-vce-sd",
            ["erase", "--method", "vce", "--concept", "red", "--model", "mini", "--out", "OUT"],
            "from autoregressive models",
        ),
        (
            "erase-vce-tiny-sd",
            ["erase", "--method", "vce", "--concept", "red", "--model", str(tiny_sd), "--out", "OUT"],
            "a diffusion model",
        ),
        ("erase-beta", vce("--set", "beta=-1"), "beta must be in"),
        ("erase-key", vce("--set", "betta=1"), "Did you mean 'beta'"),
        ("erase-type", vce("--set", "lora_rank=two"), "lora_rank must be an integer"),
        ("erase-choice", vce("--set", "rewriter=llm"), "must be one of"),
        ("erase-nan", vce("--set", "lr=nan"), "finite"),
        ("erase-form", vce("--set", "beta"), "KEY=VALUE"),
        ("erase-config-aliases", vce("--config", s["aliases.yaml"]), "aliases are not allowed"),
        ("erase-config-latin1", vce("--config", s["latin1.yaml"]), "not UTF-8"),
        ("erase-config-list", vce("--config", s["list.yaml"]), "mapping of option names"),
        ("erase-config-notyaml", vce("--config", s["notyaml.yaml"]), "not valid YAML"),
        ("erase-config-missing", vce("--config", s["missing"]), "does not exist"),
        ("erase-stage", vce("--stage", "cost"), "not a stage of vce"),
        ("erase-merge", vce("--merge"), "--merge is not available"),
        ("erase-steps", vce("--steps", "0"), "--steps"),
        ("erase-resume-empty", vce("--resume"), "holds no VCE run"),
        (
            "erase-out-empty",
            ["erase", "--method", "vce", "--concept", "red", "--out", ""],
            "must name a folder",
        ),
        (
            "erase-out-notempty",
            ["erase", "--method", "vce", "--concept", "red", "--out", s["notempty"]],
            "not empty",
        ),
        ("erase-file-rewriter", vce("--set", "rewriter=file"), "needs --set pairs_file"),
        (
            "erase-pairs-seed",
            vce("--set", "rewriter=file", "--set", f"pairs_file={s['pairs_seed.jsonl']}"),
            "seed must be",
        ),
        (
            "erase-pairs-bigseed",
            vce("--set", "rewriter=file", "--set", f"pairs_file={s['pairs_bigseed.jsonl']}"),
            "seed must be at most",
        ),
        (
            "erase-pairs-prompt",
            vce("--set", "rewriter=file", "--set", f"pairs_file={s['pairs_prompt.jsonl']}"),
            "string 'prompt'",
        ),
        (
            "erase-pairs-json",
            vce("--set", "rewriter=file", "--set", f"pairs_file={s['pairs_json.jsonl']}"),
            "not valid JSON",
        ),
        (
            "erase-pairs-image",
            vce("--set", "rewriter=file", "--set", f"pairs_file={s['pairs_image.jsonl']}"),
            "not a readable image",
        ),
        (
            "erase-pairs-nosafe",
            vce("--set", "rewriter=file", "--set", f"pairs_file={s['pairs_nosafe.jsonl']}"),
            "needs 'safe_prompt'",
        ),
        (
            "erase-pairs-missing",
            vce("--set", "rewriter=file", "--set", f"pairs_file={s['missing']}"),
            "Cannot read pairs file",
        ),
        (
            "erase-pairs-without-file",
            vce("--set", f"pairs_file={s['pairs_seed.jsonl']}"),
            "read only with rewriter=file",
        ),
        ("erase-filter", vce("--set", "pair_filter=nudenet"), "for nudity concepts"),
        ("erase-pairs-dir", vce("--set", f"pairs_dir={s['empty_dir']}"), "holds no finished pair set"),
        (
            "erase-cost-dir",
            [
                "erase",
                "--method",
                "scdpo",
                "--concept",
                "red",
                "--set",
                f"cost_dir={s['empty_dir']}",
                "--out",
                "OUT",
            ],
            "holds no finished cost model",
        ),
        (
            "erase-precision",
            [
                "erase",
                "--method",
                "scdpo",
                "--concept",
                "red",
                "--set",
                "mixed_precision=fp8",
                "--out",
                "OUT",
            ],
            "must be one of",
        ),
        ("erase-concepts-file", vce("--concepts-file", s["c_twice.yaml"]), "defined twice"),
        ("erase-device", vce("--device", "cuda"), "no CUDA GPU"),
        # attack
        ("atk-typo", ["attack", "--attack", "unlearndif", "--concept", "red"], "Did you mean 'unlearndiff'"),
        ("atk-guard-name", ["attack", "--attack", "sp", "--concept", "red"], "Unknown attack method 'sp'"),
        ("atk-no-concept", ["attack", "--attack", "unlearndiff"], "needs --concept"),
        ("atk-not-mini", atk()[:4] + ["nudity", "--out", "OUT"], "mini world has no concept 'nudity'"),
        ("atk-slots", atk("--set", "slots=0"), "slots must be in"),
        ("atk-key", atk("--set", "nope=1"), "has no option 'nope'"),
        ("atk-schedule", atk("--set", "t_first=900", "--set", "t_last=10"), "t_last must be at least"),
        (
            "atk-resume",
            ["attack", "--attack", "unlearndiff", "--concept", "red", "--resume"],
            "--resume needs --out",
        ),
        (
            "atk-out-empty",
            ["attack", "--attack", "unlearndiff", "--concept", "red", "--out", ""],
            "must name a folder",
        ),
        ("atk-prompts-missing", atk("--prompts", s["missing"]), "Cannot read prompts file"),
        ("atk-prompts-json", atk("--prompts", s["prompts_bad.jsonl"]), "not valid JSON"),
        ("atk-prompts-list", atk("--prompts", s["prompts_list.jsonl"]), "not a JSON object"),
        ("atk-prompts-field", atk("--prompts", s["prompts_nofield.jsonl"]), "no string field"),
        ("atk-prompts-empty", atk("--prompts", s["prompts_empty.txt"]), "No prompt to attack"),
        (
            "atk-prompts-column",
            atk("--prompts", s["prompts.txt"], "--prompt-column", "x"),
            "for CSV and JSONL",
        ),
        ("atk-targets", atk("--targets", "x"), "--targets"),
        ("atk-target-images", atk("--target-images", "0"), "--target-images"),
        ("atk-guard-set", atk("--guard", "sp", "--set", "tau=9"), "tau must be in"),
        ("atk-ar-guard", atk("--model", "mini-ar", "--guard", "sp"), "diffusion loop"),
        (
            "atk-config",
            [
                "attack",
                "--attack",
                "inversion",
                "--concept",
                "red",
                "--config",
                s["aliases.yaml"],
                "--out",
                "OUT",
            ],
            "aliases",
        ),
        (
            "atk-no-detector",
            [
                "attack",
                "--attack",
                "ringabell",
                "--concept",
                "violence",
                "--model",
                str(tiny_sd),
                "--out",
                "OUT",
            ],
            "no detector",
        ),
        (
            "atk-no-prompts",
            [
                "attack",
                "--attack",
                "ringabell",
                "--concept",
                "nudity",
                "--model",
                str(tiny_sd),
                "--out",
                "OUT",
            ],
            "needs --prompts",
        ),
        (
            "atk-render-real",
            [
                "attack",
                "--attack",
                "unlearndiff",
                "--concept",
                "nudity",
                "--model",
                str(tiny_sd),
                "--prompts",
                s["prompts.txt"],
                "--targets",
                "render",
                "--out",
                "OUT",
            ],
            "needs a mini-world concept",
        ),
        ("atk-preset", atk("--judge-preset", "x"), "--judge-preset"),
        # export, calibrate, bench quality
        ("exp-missing", ["export", s["missing"], "--format", "diffusers", "--out", "OUT"], "not found"),
        (
            "exp-empty",
            ["export", s["empty_dir"], "--format", "diffusers", "--out", "OUT"],
            "not a LoRA adapter",
        ),
        (
            "exp-corrupt",
            ["export", s["ad_corrupt"], "--format", "diffusers", "--out", "OUT"],
            "Corrupt weights",
        ),
        (
            "exp-kohya-name",
            ["export", s["ad_sd"], "--format", "kohya", "--out", "OUT"],
            "ending in .safetensors",
        ),
        ("exp-format", ["export", s["ad_sd"], "--format", "ckpt", "--out", "OUT"], "Unknown export format"),
        (
            "exp-ar-kohya",
            ["export", s["ad_nomatch"], "--format", "single-file", "--out", "OUT"],
            "Stable Diffusion",
        ),
        (
            "exp-merge-nomatch",
            ["export", s["ad_sd"], "--format", "diffusers", "--merge", "--model", "mini", "--out", "OUT"],
            "no up projection",
        ),
        (
            "cal-guard",
            ["calibrate", "--guard", "sld", "--concept", "red", "--out", "OUT"],
            "none to calibrate",
        ),
        ("cal-noconcept", ["calibrate", "--guard", "sp", "--out", "OUT"], "needs --concept"),
        (
            "cal-prompts",
            ["calibrate", *sp, "--prompts", s["prompts_bad.jsonl"], "--out", "OUT"],
            "not valid JSON",
        ),
        ("cal-few", ["calibrate", *sp, "--prompts", s["prompts.txt"], "--out", "OUT"], "at least 3"),
        ("cal-fpr", ["calibrate", *sp, "--target-fpr", "0.9", "--out", "OUT"], "target_fpr"),
        (
            "q-features",
            ["bench", "quality", "--captions", "smoke", "--features", "x", "--out", "OUT"],
            "features",
        ),
        (
            "q-captions",
            ["bench", "quality", "--captions", s["prompts_empty.txt"], "--out", "OUT"],
            "no captions",
        ),
        (
            "q-bad",
            ["bench", "quality", "--captions", s["prompts_bad.jsonl"], "--out", "OUT"],
            "not valid JSON",
        ),
        (
            "q-reference",
            ["bench", "quality", "--captions", "smoke", "--reference", s["a_file"], "--out", "OUT"],
            "reference must be",
        ),
        (
            "q-clip",
            ["bench", "quality", "--captions", "smoke", "--clip", s["missing"], "--out", "OUT"],
            "not found",
        ),
        # report
        ("rep-none", ["report"], "Missing argument"),
        ("rep-missing", ["report", s["missing"], "--out", "OUT"], "not a run folder"),
        ("rep-noresults", ["report", s["run_noresults"], "--out", "OUT"], "has no results.json"),
        ("rep-list", ["report", s["run_list"], "--out", "OUT"], "not a JSON object"),
        ("rep-results", ["report", s["run_results"], "--out", "OUT"], "not a JSON object"),
        ("rep-json", ["report", s["run_json"], "--out", "OUT"], "not valid JSON"),
        ("rep-escape", ["report", s["run_escape"], "--out", "OUT"], "points outside the run folder"),
        ("rep-badline", ["report", s["run_badline"], "--out", "OUT"], "line 1 is not valid JSON"),
        ("rep-overall", ["report", s["run_overall"], "--out", "OUT"], "'overall' is not an object"),
        (
            "rep-into-run",
            ["report", s["run_ok"], "--out", str(f["run_ok"] / "results.json")],
            "lies inside the run folder",
        ),
        ("rep-into-dir", ["report", s["run_ok"], "--out", s["empty_dir"]], "is a directory"),
    ]
    return out
