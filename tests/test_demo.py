"""Smoke test of the demo path (make demo) with a reduced step count."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("version,precision", [("v2", "auto"), ("v2ProPlus", "fp32")])
def test_demo_end_to_end(tmp_path, version, precision):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(tmp_path), "--steps", "10",
                        "--bench-requests", "2", "--sentences", "12", "--pretrained", str(tmp_path / "no-pretrained"),
                        "--version", version, "--cpu-precision", precision],
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["base"] == "small" and summary["model_version"] == version
    assert "tensorrt" in summary["tensorrt"].lower()  # no GPU here: the demo reports why no engine was built
    audio, sr = sf.read(tmp_path / "demo.wav")
    assert sr == 32000 and audio.size > 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert [lv["concurrency"] for lv in bench["levels"]] == [1, 2, 4] and all(not lv["errors"] for lv in bench["levels"])
    assert (tmp_path / "bench.png").stat().st_size > 1000
    # voice quality: measured by the pretrained speaker encoder, with its reference points (no threshold
    # here: 10 training steps give no voice; the goals are reported in quality.json["met"])
    q = json.loads((tmp_path / "quality.json").read_text())
    assert q["encoder"] == "resemblyzer-ge2e" and summary["quality_json"] == str(tmp_path / "quality.json")
    for key in ("trained", "demo_wav", "untrained_base"):
        assert -1.0 <= q[key]["speaker_similarity"] <= 1.0, key
    assert 0.0 < q["floor"] < q["ceiling"] <= 1.0 and q["reference"]["ceiling_method"] == "held-out"
    assert len(q["trained"]["sentences"]) == 4 and abs(q["int8_vs_fp32"]) <= 2 and abs(q["stream_vs_whole"]) <= 2
    assert set(q["met"]) == {"trained_min", "above_untrained_base", "int8_vs_fp32", "stream_vs_whole"}
    assert q["training"]["gpt_steps"] == 10 and q["training"]["sovits_steps"] == 10
    assert q["training"]["cpu_precision"] in (("bf16", "fp32") if precision == "auto" else (precision,))
    from trainer.checkpointing import load_state

    for stage in ("gpt", "sovits"):  # both stages trained in the precision the recipe was sized for
        state = load_state(tmp_path / "demo" / "exp" / "train" / stage / "state-last.pt")
        assert state["config"]["cpu_precision"] == q["training"]["cpu_precision"], stage
    # where the speaker is lost (the demo's bundle has the posterior encoder and a HuBERT: every stage runs)
    st = q["stages"]
    assert -1.0 <= st["reconstruction"]["speaker_similarity"] <= 1.0 and "0-100" in st["spectrum_db"]
    assert -1.0 <= st["prior_from_real_tokens"]["speaker_similarity"] <= 1.0 and st["weakest_stage"]
    import matplotlib.image

    assert matplotlib.image.imread(str(tmp_path / "bench.png")).shape[1] > 1800  # 3 serving panels + the voice


def _demo_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gsv_demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flag(recipe: dict, name: str):
    """The value that follows ``name`` in the recipe's SoVITS arguments."""
    args = recipe["sovits_args"]
    return args[args.index(name) + 1]


def test_scratch_recipe_gives_bf16_machines_the_vocoder_steps_their_faster_steps_buy():
    demo = _demo_module()
    bf16, fp32 = demo.scratch_recipe(True), demo.scratch_recipe(False)
    assert _flag(bf16, "--vocoder-steps") > _flag(fp32, "--vocoder-steps")
    assert _flag(bf16, "--prior-steps") == _flag(fp32, "--prior-steps")
    for recipe in (bf16, fp32):  # the steps the stage runs are exactly its phases
        assert recipe["sovits_steps"] == _flag(recipe, "--vocoder-steps") + _flag(recipe, "--prior-steps")
    assert (bf16["precision"], fp32["precision"]) == ("bf16", "fp32")


def test_quality_recipe_grows_the_phases_with_the_budget_and_keeps_half_of_it_for_later_steps():
    demo = _demo_module()
    for bf16 in (True, False):
        short, standard = demo.quality_recipe(bf16, 1.0), demo.scratch_recipe(bf16)
        assert short["sovits_args"] != standard["sovits_args"]  # only the validation interval differs
        assert _flag(short, "--vocoder-steps") == _flag(standard, "--vocoder-steps")
        long = demo.quality_recipe(bf16, 45)
        scale = 45 * demo.QUALITY_PHASE_SHARE / demo.DEMO_SOVITS_MINUTES
        assert _flag(long, "--vocoder-steps") == round(_flag(standard, "--vocoder-steps") * scale)
        assert _flag(long, "--prior-steps") == round(_flag(standard, "--prior-steps") * scale)
        assert long["sovits_steps"] == _flag(long, "--vocoder-steps") + _flag(long, "--prior-steps")
        assert _flag(long, "--min-epoch-items") == demo.QUALITY_EPOCH_ITEMS
