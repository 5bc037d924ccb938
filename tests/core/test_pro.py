"""v2Pro / v2ProPlus: file formats, import rules, the speaker-verification model, voices and synthesis."""
from __future__ import annotations

import collections
import io
import zipfile
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from gsv.checkpoint.bundle import Bundle
from gsv.checkpoint.torchzip import load_torch_zip, save_torch_zip
from gsv.checkpoint.upstream import load_sovits, load_sv, save_gpt, save_sovits, save_sv
from gsv.cli import main
from gsv.errors import CheckpointError
from gsv.models.speaker_verification import kaldi_fbank, kaldi_mel_banks
from tests.conftest import speechlike, tiny_gpt, tiny_pro_configs, tiny_sovits, tiny_sv, wav_bytes
from tests.core.test_checkpoints import TINY_HPS


def _pro_models(version: str):
    sovits_cfg, sv_cfg = tiny_pro_configs(version)
    s = tiny_sovits(**{k: v for k, v in asdict(sovits_cfg).items()})
    return s, tiny_sv(sv_cfg)


def write_pro_files(tmp_path, version: str = "v2Pro"):
    """Upstream-layout tiny files: GPT .ckpt, Pro SoVITS .pth (my_save2), SV state dict .ckpt."""
    g = tiny_gpt()
    s, sv = _pro_models(version)
    gp, sp, svp = tmp_path / "g.ckpt", tmp_path / f"{version}.pth", tmp_path / "sv.ckpt"
    save_gpt(gp, g.cfg, g.state_dict(), "GPT-e1")
    save_sovits(sp, s.cfg, s.state_dict(), "8epoch_1234iteration", dict(TINY_HPS, model=s.cfg.to_upstream_model()))
    save_sv(svp, sv.cfg, sv.model.state_dict())
    return gp, sp, svp, s, sv


@pytest.mark.parametrize("version,header", [("v2Pro", b"05"), ("v2ProPlus", b"06")])
def test_pro_file_written_like_my_save2(tmp_path, version, header):
    _, sp, _, s, _ = write_pro_files(tmp_path, version)
    data = sp.read_bytes()
    assert data[:4] == header + b"\x03\x04"  # the version header over 'PK'
    names = zipfile.ZipFile(io.BytesIO(b"PK" + data[2:])).namelist()
    assert all(n.startswith("archive/") for n in names)  # torch.save into a BytesIO, as my_save2 does
    up = load_sovits(sp)
    assert up.version == version and up.header == header.decode() and up.config.is_pro
    assert up.config.gin_channels == s.cfg.gin_channels and up.config.upsample_kernel_sizes == s.cfg.upsample_kernel_sizes
    for k in ("sv_emb.weight", "ge_to512.weight", "prelu.weight"):
        torch.testing.assert_close(up.state_dict[k], s.state_dict()[k].half().float())


def test_header_decides_variant_and_config_disagreement_warns(tmp_path, caplog):
    _, sp, _, _, _ = write_pro_files(tmp_path, "v2Pro")
    obj = load_torch_zip(b"PK" + sp.read_bytes()[2:])
    obj["config"].model.version = "v2ProPlus"  # a config that disagrees with the header
    other = tmp_path / "disagree.pth"
    save_torch_zip(obj, other, archive_name="archive", magic=b"05")
    with caplog.at_level("WARNING"):
        assert load_sovits(other).version == "v2Pro"
    assert "header says v2Pro but its config says v2ProPlus" in caplog.text


def test_pro_weights_with_pk_header_refused_unless_told(tmp_path):
    _, sp, _, _, _ = write_pro_files(tmp_path, "v2Pro")
    pk = tmp_path / "pk.pth"
    pk.write_bytes(b"PK" + sp.read_bytes()[2:])
    with pytest.raises(CheckpointError, match="starts with b'PK' instead of upstream's Pro header"):
        load_sovits(pk)
    assert load_sovits(pk, version_override="v2Pro").version == "v2Pro"
    with pytest.raises(CheckpointError, match="cannot be read as v2ProPlus"):
        load_sovits(sp, version_override="v2ProPlus")


def test_sv_file_roundtrip_and_config_inference(tmp_path):
    _, _, svp, _, sv = write_pro_files(tmp_path)
    obj = load_torch_zip(svp.read_bytes())
    assert isinstance(obj, collections.OrderedDict) and "seg_1.weight" in obj
    assert obj["bn1.num_batches_tracked"].dtype == torch.int64
    up = load_sv(svp)
    assert up.config == sv.cfg and "seg_1.weight" not in up.state_dict
    for k, v in sv.model.state_dict().items():
        assert torch.equal(up.state_dict[k], v)


def _import(tmp_path, *extra):
    return main(["import", "--out", str(tmp_path / "bundle"), *extra])


@pytest.mark.parametrize("version", ["v2Pro", "v2ProPlus"])
def test_import_pro_bundle(tmp_path, version, capsys):
    gp, sp, svp, s, sv = write_pro_files(tmp_path, version)
    assert _import(tmp_path, "--gpt", str(gp), "--sovits", str(sp), "--sv", str(svp)) == 0
    b = Bundle.open(tmp_path / "bundle")
    assert b.model_version == version and b.symbol_version == "v2" and b.is_pro and b.sv_config == sv.cfg
    assert b.manifest["sources"]["sovits"]["header"] == ("05" if version == "v2Pro" else "06")
    wav = torch.from_numpy(speechlike(2.0)[0]).unsqueeze(0)
    torch.testing.assert_close(b.load_sv(fuse=False)(wav), sv(wav))


@pytest.mark.parametrize("case", ["no_sv", "sv_for_v2", "pk_header", "truncated_sv", "sv_missing_key", "sv_is_sovits"])
def test_import_errors_are_one_line_exit_2(tmp_path, capsys, case):
    gp, sp, svp, _, sv = write_pro_files(tmp_path)
    args = ["--gpt", str(gp), "--sovits", str(sp), "--sv", str(svp)]
    expect = {
        "no_sv": "needs the speaker-verification model too",
        "sv_for_v2": "--sv is only for v2Pro/v2ProPlus",
        "pk_header": "instead of upstream's Pro header",
        "truncated_sv": "corrupt or truncated",
        "sv_missing_key": "speaker-verification checkpoint is missing 1 tensors: layer2.0.convs.1.weight",
        "sv_is_sovits": "not the speaker-verification model",
    }[case]
    if case == "no_sv":
        args = args[:4]
    elif case == "sv_for_v2":
        v2 = tmp_path / "v2.pth"
        s2 = tiny_sovits()
        save_sovits(v2, s2.cfg, s2.state_dict(), "x", dict(TINY_HPS, model=s2.cfg.to_upstream_model()))
        args[3] = str(v2)
    elif case == "pk_header":
        (tmp_path / "pk.pth").write_bytes(b"PK" + sp.read_bytes()[2:])
        args[3] = str(tmp_path / "pk.pth")
    elif case == "truncated_sv":
        svp.write_bytes(svp.read_bytes()[: svp.stat().st_size // 2])
    elif case == "sv_missing_key":
        sd = dict(sv.model.state_dict())
        del sd["layer2.0.convs.1.weight"]
        save_sv(svp, sv.cfg, sd)
    elif case == "sv_is_sovits":
        args[5] = str(sp)
    assert _import(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert not (tmp_path / "bundle").exists()


def test_kaldi_fbank_framing_and_filters():
    banks = kaldi_mel_banks()
    assert banks.shape == (80, 257) and float(banks[:, -1].abs().sum()) == 0.0  # Nyquist bin unused
    assert torch.all(banks.sum(1) > 0)  # every filter covers at least one bin
    wav = torch.from_numpy(speechlike(1.0)[0]).unsqueeze(0)
    assert kaldi_fbank(wav).shape == (1, 1 + (16000 - 400) // 160, 80)
    # a pure tone lights up the filter whose centre is nearest to it
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(16000) / 16000).unsqueeze(0)
    peak = int(kaldi_fbank(tone)[0].mean(0).argmax())
    centres = (banks * torch.arange(257)).sum(1) / banks.sum(1) * 16000 / 512
    assert abs(float(centres[peak]) - 1000) < 60
    with pytest.raises(ValueError, match="too short"):
        kaldi_fbank(torch.zeros(1, 399))


def test_pro_voice_stores_one_sv_embedding_per_reference(tiny_pro_bundle, tmp_path):
    from gsv.pipeline import TextPreparer, make_voice_preparer
    from gsv.voice import VoiceStore

    prep = make_voice_preparer(tiny_pro_bundle, TextPreparer.from_bundle(tiny_pro_bundle))
    main_ref, aux = wav_bytes(*speechlike(4.0, seed=1)), wav_bytes(*speechlike(3.5, seed=2))
    voice = prep.prepare("pro", main_ref, "我们在北京。", "zh", [aux])
    assert voice.sv_emb.shape == (2, tiny_pro_bundle.sv_config.embedding_dim)
    assert voice.ge.shape == (tiny_pro_bundle.sovits_config.gin_channels, 1)
    # ge = mean over references of PReLU(ref_enc(spec_i) + sv_emb(e_i)): without the aux it changes
    alone = prep.prepare("alone", main_ref, "我们在北京。", "zh")
    assert torch.equal(alone.sv_emb[0], voice.sv_emb[0]) and not torch.allclose(alone.ge, voice.ge)
    store = VoiceStore(tmp_path / "voices")
    store.save(voice, [main_ref, aux])
    loaded = store.load("pro", tiny_pro_bundle.bundle_id)
    assert torch.equal(loaded.sv_emb, voice.sv_emb) and store.metadata("pro")["speaker_verification"] is True


def test_pro_synthesis_uses_the_sv_embedding(tiny_pro_bundle):
    from gsv.pipeline import Synthesizer
    from gsv.sampling import SamplingOptions
    from gsv.session import SynthesisOptions

    synth = Synthesizer(tiny_pro_bundle, "torch")
    voice = synth.prepare_voice(wav_bytes(*speechlike(4.0)), "我们在北京。", "zh")
    opts = SynthesisOptions(sampling=SamplingOptions(seed=5, max_tokens=30), streaming=False)
    a, _ = synth.synthesize("你好世界。", "zh", voice, opts)
    assert a.size > 0 and np.isfinite(a).all() and np.abs(a).max() > 1e-3
    # the same voice with another speaker-verification embedding gives other audio
    sovits = synth.voice_preparer.sovits
    spec_ge = voice.ge.clone()
    other_sv = voice.sv_emb * 0.5
    from gsv.audio import read_audio, resample_torchaudio, spectrogram

    w, sr = read_audio(wav_bytes(*speechlike(4.0)))
    w32 = resample_torchaudio(torch.from_numpy(w).unsqueeze(0), sr, 32000)
    other_ge = sovits.speaker_embedding(spectrogram(w32), other_sv)[0]
    assert not torch.allclose(other_ge, spec_ge)
    b, _ = synth.synthesize("你好世界。", "zh", replace(voice, ge=other_ge), opts)
    assert a.shape != b.shape or not np.allclose(a, b)


def test_batchnorm_folding_keeps_the_embedding(tmp_path):
    """The served speaker-verification network (BatchNorms folded into the convolutions) computes the same
    embedding as the network in upstream's layout."""
    _, sv = _pro_models("v2Pro")
    wav = torch.from_numpy(speechlike(2.0)[0]).unsqueeze(0)
    before = sv(wav)
    folded = tiny_sv(sv.cfg).for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    after = folded(wav)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5 * float(before.abs().max()))
