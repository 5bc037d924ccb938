"""Full-size v2Pro / v2ProPlus bases from the kit's fake upstream files: prepare (speaker-verification
embeddings), two steps of each stage, upstream-layout outputs that re-import and synthesize."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from tests.trainer.conftest import tiny_cfg
from tests.trainer.test_fullsize import _manifest, _upstream_load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["v2Pro", "v2ProPlus"])
def pro_setup(request, fake_ckpts, syn_data, tmp_path_factory):
    """(version, base bundle, prepared experiment of two utterances) for each Pro variant."""
    from gsv.checkpoint.bundle import write_bundle
    from gsv.checkpoint.upstream import load_gpt, load_sovits, load_sv
    from trainer.init_base import write_random_hubert
    from trainer.prepare import prepare

    version = request.param
    root = tmp_path_factory.mktemp(f"full_{version}")
    g = load_gpt(fake_ckpts.get("s1_v2.json"))
    s = load_sovits(fake_ckpts.get(f"s2_{version}.json", include_stripped=True))  # the pretrained layout keeps enc_q
    sv = load_sv(fake_ckpts.get("sv_eres2netv2.json"))
    assert s.version == version and s.has_posterior
    base = write_bundle(root / "base", g.config, g.state_dict, s.config, s.state_dict,
                        hubert_dir=write_random_hubert(root / "hubert", 768, layers=1), sources={"kind": "fakeckpt"},
                        sv_config=sv.config, sv_state=sv.state_dict)
    lst = root / "two.list"
    lst.write_text("\n".join(syn_data.read_text().splitlines()[:2]) + "\n")
    summary = prepare(lst, root / "exp", base.path, progress=False)
    assert len(summary.items) == 2 and all(it["has_sv"] for it in summary.items)
    return version, base, root / "exp"


def test_prepare_stores_the_speaker_verification_embedding(pro_setup):
    from gsv.audio import resample_torchaudio
    from trainer.data import Experiment, load_tensors

    version, base, exp_path = pro_setup
    exp = Experiment.open(exp_path)
    t = load_tensors(exp.file(exp.items[0]), ("sv", "wav"))
    assert t["sv"].shape == (base.sovits_config.sv_dim,) == (20480,)
    # 2-get-sv.py: the stored 32 kHz training wav, resampled to 16 kHz, through fbank + ERes2NetV2
    wav = t["wav"].float().unsqueeze(0) / 32768.0
    expect = base.load_sv()(resample_torchaudio(wav, 32000, 16000))[0]
    # (another process and thread count: summation order differs by float rounding only)
    torch.testing.assert_close(t["sv"], expect, rtol=1e-3, atol=1e-4 * float(expect.abs().max()))


def test_pro_sovits_and_gpt_steps_reimport_and_synthesize(pro_setup, fake_ckpts, tmp_path):
    from gsv.checkpoint.bundle import Bundle
    from gsv.cli import main as gsv_main
    from gsv.pipeline import Synthesizer
    from gsv.sampling import SamplingOptions
    from gsv.session import SynthesisOptions
    from tests.conftest import speechlike, wav_bytes
    from trainer.checkpointing import load_state, load_weights
    from trainer.run import train

    version, base, exp_src = pro_setup
    exp = tmp_path / "exp"
    shutil.copytree(exp_src, exp)
    r = train("sovits", exp, tiny_cfg("sovits", max_steps=2, batch_size=1, val_fraction=0.0))
    assert r.progress.global_step == 2 and all(math.isfinite(v) for row in r.train_log for v in row.values())
    before, after = base.sovits_state_dict(), load_weights(exp / "train/sovits/last.safetensors")
    for k in ("sv_emb.weight", "prelu.weight", "ge_to512.weight", "dec.conv_pre.weight"):
        assert not torch.equal(before[k], after[k]), f"{k} was not trained"
    # upstream's Pro discriminator: scale discriminator + periods 2, 3, 5, 7, 11, 17, 23
    d = load_state(exp / "train/sovits/state-last.pt")["models"]["d"]
    assert len({k.split(".")[1] for k in d if k.startswith("discriminators.")}) == 8
    pth = exp / "weights/sovits-last.pth"
    assert pth.read_bytes()[:2] == (b"05" if version == "v2Pro" else b"06")
    raw = pth.read_bytes()
    pth_pk = tmp_path / "pk.pth"
    pth_pk.write_bytes(b"PK" + raw[2:])  # what upstream's load_sovits_new hands to torch.load
    obj = _upstream_load(pth_pk)
    man = _manifest(f"s2_{version}.json")
    assert {k: list(v.shape) for k, v in obj["weight"].items()} == {t["key"]: t["shape"] for t in man["tensors"]}
    assert obj["config"].model.version == version and obj["config"].model.gin_channels == 1024

    if version == "v2Pro":  # the GPT is the v2 one for both variants: train it once
        r = train("gpt", exp, tiny_cfg("gpt", max_steps=2, batch_size=1, val_fraction=0.0))
        assert r.progress.global_step == 2
    gpt_file = exp / "weights/gpt-last.ckpt" if version == "v2Pro" else fake_ckpts.get("s1_v2.json")
    out = tmp_path / "reimported"
    assert gsv_main(["import", "--gpt", str(gpt_file), "--sovits", str(pth), "--sv",
                     str(fake_ckpts.get("sv_eres2netv2.json")), "--out", str(out)]) == 0
    b = Bundle.open(out)
    assert b.model_version == version
    synth = Synthesizer(b, "torch")
    voice = synth.voice_preparer.prepare("v", wav_bytes(*speechlike(3.5)), "Hello there.", "en")
    assert voice.sv_emb.shape == (1, 20480)
    audio, session = synth.synthesize("Good morning.", "en", voice,
                                      SynthesisOptions(sampling=SamplingOptions(seed=1, max_tokens=15), streaming=False))
    assert audio.size >= 1280 and np.isfinite(audio).all() and np.abs(audio).max() > 1e-3
