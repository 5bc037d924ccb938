"""Both stages on the tiny from-scratch base: steps, outputs in upstream layout, bundles, loss decrease,
resume after a crash, atomic checkpoints, early stopping."""
from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import torch

from tests.trainer.conftest import tiny_cfg


def _weights(path):
    from trainer.checkpointing import load_weights

    return load_weights(path)


def test_sovits_steps_change_weights_and_write_upstream_files(exp_copy, tiny_base):
    from gsv.checkpoint.upstream import load_sovits
    from gsv.checkpoint.torchzip import load_torch_zip
    from trainer.run import train

    r = train("sovits", exp_copy, tiny_cfg("sovits", max_steps=2))
    assert r.progress.global_step == 2 and len(r.train_log) == 2
    assert all(math.isfinite(v) for row in r.train_log for v in row.values())
    before = tiny_base.sovits_state_dict()
    after = _weights(exp_copy / "train/sovits/last.safetensors")
    assert after.keys() == before.keys()  # enc_q kept for further fine-tuning
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("dec.") for k in changed) and any(k.startswith("enc_q.") for k in changed)
    for frozen in ("ssl_proj.weight", "quantizer.vq.layers.0._codebook.embed"):
        assert torch.equal(before[frozen], after[frozen])
    pth = exp_copy / "weights/sovits-last.pth"
    up = load_sovits(pth)
    assert up.version == "v2" and not up.has_posterior and up.info == "1epoch_2iteration"
    for k, v in up.state_dict.items():
        torch.testing.assert_close(v, after[k], atol=3e-3, rtol=3e-3)
    raw = load_torch_zip(pth.read_bytes())
    assert pth.read_bytes()[:2] == b"PK" and list(raw) == ["weight", "config", "info"]
    assert "dec.ups.0.weight_g" in raw["weight"] and not any("enc_q" in k for k in raw["weight"])
    assert all(v.dtype == torch.float16 for v in raw["weight"].values())


def test_sovits_warmup_steps_leave_the_discriminator_out(exp_copy, tmp_path):
    import shutil

    from trainer.checkpointing import load_state
    from trainer.run import train

    other = tmp_path / "other"
    shutil.copytree(exp_copy, other)
    train("sovits", other, tiny_cfg("sovits", max_steps=1, warmup_steps=2))
    r = train("sovits", exp_copy, tiny_cfg("sovits", max_steps=2, warmup_steps=2))
    assert [sorted(row) for row in r.train_log] == [["learning_rate", "loss/g/dc", "loss/g/kl", "loss/g/mel",
                                                     "loss/g/total", "step"]] * 2
    d_one, d_two = (load_state(e / "train/sovits/state-last.pt")["models"]["d"] for e in (other, exp_copy))
    assert all(torch.equal(d_one[k], d_two[k]) for k in d_one)  # warm-up steps never touch the discriminator
    r = train("sovits", exp_copy, tiny_cfg("sovits", max_steps=3, warmup_steps=2))  # resumes: one full step
    assert r.progress.global_step == 3 and "loss/d/total" in r.train_log[-1] and "loss/g/fm" in r.train_log[-1]
    d_three = load_state(exp_copy / "train/sovits/state-last.pt")["models"]["d"]
    assert any(not torch.equal(d_two[k], d_three[k]) for k in d_two)


def test_sovits_vocoder_then_prior_steps_train_their_parts_only(exp_copy, tiny_base):
    from trainer.checkpointing import load_state
    from trainer.run import train

    def cfg(steps):
        return tiny_cfg("sovits", max_steps=steps, vocoder_steps=2, prior_steps=1, warmup_steps=1,
                        vocoder_segment_frames=24)

    def changed(a, b):  # (weight norm folded back after training moves untouched weights by rounding only)
        return {k.split(".")[0] for k in a if not torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7)}

    r = train("sovits", exp_copy, cfg(2))
    assert r.progress.global_step == 2 and [sorted(row) for row in r.train_log] == [
        ["learning_rate", "loss/g/dc", "loss/g/kl", "loss/g/mel", "loss/g/total", "step"]] * 2
    before = tiny_base.sovits_state_dict()
    after_vocoder = _weights(exp_copy / "train/sovits/last.safetensors")
    assert changed(before, after_vocoder) == {"dec", "enc_q", "ref_enc"}  # text encoder, flow, frozen parts: untouched
    d_before = load_state(exp_copy / "train/sovits/state-last.pt")["models"]["d"]
    r = train("sovits", exp_copy, cfg(3))  # resumes into the prior phase: KL only, the posterior side frozen
    assert sorted(r.train_log[-1]) == ["learning_rate", "loss/g/kl", "loss/g/total", "step"]
    after_prior = _weights(exp_copy / "train/sovits/last.safetensors")
    assert changed(after_vocoder, after_prior) == {"enc_p", "flow"}
    r = train("sovits", exp_copy, cfg(4))  # the warm-up step trains everything but the discriminator
    after_warmup = _weights(exp_copy / "train/sovits/last.safetensors")
    assert {"dec", "enc_q", "enc_p", "flow"} <= changed(after_prior, after_warmup)
    d_after = load_state(exp_copy / "train/sovits/state-last.pt")["models"]["d"]
    assert all(torch.equal(d_before[k], d_after[k]) for k in d_before)


def test_gpt_steps_change_weights_and_write_upstream_files(exp_copy, tiny_base):
    from gsv.checkpoint.upstream import load_gpt
    from trainer.run import train

    r = train("gpt", exp_copy, tiny_cfg("gpt", max_steps=2, grad_accum=2))
    assert r.progress.global_step == 2
    lrs = [row["learning_rate"] for row in r.train_log]
    assert lrs == [0.01, 0.002]  # upstream's effective schedule: constructor lr once, then 0.002
    before, after = tiny_base.gpt_state_dict(), _weights(exp_copy / "train/gpt/last.safetensors")
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("in_proj_weight"))
    up = load_gpt(exp_copy / "weights/gpt-last.ckpt")
    assert up.info == "GPT-e1" and up.config == tiny_base.gpt_config
    for k, v in up.state_dict.items():
        torch.testing.assert_close(v, after[k], atol=2e-3, rtol=2e-3)


def test_tiny_training_loss_decreases(exp_copy):
    from trainer.run import train

    r = train("gpt", exp_copy, tiny_cfg("gpt", epochs=12, max_steps=36, batch_size=4, val_fraction=0.0))
    ce = [row["loss/ce_per_token"] for row in r.train_log]
    assert sum(ce[-6:]) / 6 < 0.9 * sum(ce[:6]) / 6, ce
    r = train("sovits", exp_copy, tiny_cfg("sovits", epochs=12, max_steps=24, batch_size=4, val_fraction=0.0))
    mel = [row["loss/g/mel"] for row in r.train_log]
    assert sum(mel[-6:]) / 6 < 0.95 * sum(mel[:6]) / 6, mel


def test_bundle_from_experiment_and_via_gsv_import(exp_copy, tmp_path):
    from gsv.checkpoint.bundle import Bundle
    from gsv.cli import main as gsv_main
    from trainer.cli import main

    assert main(["sovits", "--exp", str(exp_copy), "--epochs", "1", "--max-steps", "1", "--no-synth",
                 "--device", "cpu", "--batch-size", "2"]) == 0
    assert main(["gpt", "--exp", str(exp_copy), "--epochs", "1", "--max-steps", "1", "--no-synth",
                 "--device", "cpu", "--batch-size", "2", "--grad-accum", "1"]) == 0
    assert main(["bundle", "--exp", str(exp_copy), "--out", str(tmp_path / "voice")]) == 0
    b = Bundle.open(tmp_path / "voice")
    trained = _weights(exp_copy / "train/sovits/best.safetensors")
    assert torch.equal(b.sovits_state_dict()["dec.conv_pre.weight"], trained["dec.conv_pre.weight"])
    assert b.hubert_dir is not None and b.bert_dir is not None
    b.load_gpt(), b.load_sovits(with_posterior=True)
    # the upstream-format files go through `gsv import` as any upstream fine-tune does
    assert gsv_main(["import", "--gpt", str(exp_copy / "weights/gpt-best.ckpt"),
                     "--sovits", str(exp_copy / "weights/sovits-best.pth"), "--out", str(tmp_path / "imported")]) == 0
    imp = Bundle.open(tmp_path / "imported")
    assert imp.gpt_config == b.gpt_config and imp.sovits_config == b.sovits_config


def test_validation_synthesis_and_best_checkpoint(exp_copy):
    from trainer.run import train

    r = train("sovits", exp_copy, tiny_cfg("sovits", epochs=1, synth=True, synth_max_tokens=20, val_fraction=0.2))
    rec = r.progress.history[-1]
    assert {"val/loss", "val/mel", "val/speaker_similarity"} <= set(rec)
    assert -1.0 <= rec["val/speaker_similarity"] <= 1.0
    assert r.progress.best == rec["val/loss"] and (exp_copy / "weights/sovits-best.pth").is_file()
    assert r.progress.metric == "val/loss"
    assert list((exp_copy / "logs/sovits/samples").glob("*.wav"))
    assert list((exp_copy / "logs/sovits").glob("events.out.tfevents.*"))


def test_speaker_similarity_comes_from_the_pretrained_encoder_with_ceiling_and_floor(exp_copy, monkeypatch):
    """val/speaker_similarity is Resemblyzer's GE2E cosine to the centroid of the training items; the
    run's ceiling (held-out items) and floor (noise) come with it; similarity can pick the best weights."""
    import json

    import numpy as np

    from gsv.quality import ResemblyzerEncoder, SpeakerEncoderUnavailable
    from trainer import validate
    from trainer.data import Experiment, load_tensors
    from trainer.run import train

    try:
        encoder = ResemblyzerEncoder()
    except SpeakerEncoderUnavailable as e:
        pytest.skip(str(e))
    synthesized = []
    real_measure = validate.ValidationSynth.measure

    def spy(self, audios):
        assert len(audios) == 2  # one per validation sentence
        synthesized.append(audios)
        return real_measure(self, audios)

    monkeypatch.setattr(validate.ValidationSynth, "measure", spy)
    r = train("gpt", exp_copy, tiny_cfg("gpt", epochs=2, synth=True, synth_max_tokens=30, val_fraction=0.2,
                                        early_stop_on="similarity",
                                        synth_text=["A short test of the voice.", "And the second sentence."]))
    hist = r.progress.history
    assert len(hist) == 2 and len(synthesized) == 2
    exp = Experiment.open(exp_copy)
    train_items, val_items = exp.split(0.2)
    ref = json.loads((exp_copy / validate.REFERENCE_FILE).read_text())
    assert ref["encoder"] == "resemblyzer-ge2e" and ref["utterances"] == len(train_items)
    assert ref["ceiling_method"] == "held-out" and ref["ceiling_utterances"] == len(val_items)
    centroid = np.asarray(ref["centroid"])
    for rec, audios in zip(hist, synthesized):
        expected = float(np.mean([encoder.embed(a, 32000) @ centroid for a in audios]))
        assert rec["val/speaker_similarity"] == pytest.approx(expected, abs=1e-4)
        assert rec["val/speaker_similarity_ceiling"] == pytest.approx(ref["ceiling"])
        assert rec["val/speaker_similarity_floor"] == pytest.approx(ref["floor"])
    # the ceiling is what the held-out real utterances score against the training centroid
    held = [encoder.embed(load_tensors(exp.file(it), ("wav",))["wav"].float().numpy() / 32768, 32000)
            for it in val_items]
    assert ref["ceiling"] == pytest.approx(float(np.mean([h @ centroid for h in held])), abs=1e-3)
    assert ref["floor"] < ref["ceiling"]
    # --early-stop-on similarity: the best weights are those of the highest similarity
    sims = [rec["val/speaker_similarity"] for rec in hist]
    assert r.progress.metric == "val/speaker_similarity" and r.progress.best == max(sims)
    assert r.progress.best_epoch == 1 + sims.index(max(sims))


def test_max_minutes_stops_training(exp_copy, monkeypatch):
    from trainer import loop
    from trainer.run import train

    now = [0.0]

    def clock():  # every look at the clock is 10 s later
        now[0] += 10.0
        return now[0]

    monkeypatch.setattr(loop, "_clock", clock)
    r = train("gpt", exp_copy, tiny_cfg("gpt", epochs=50, max_minutes=0.5))  # deadline at +30 s: two steps
    assert r.progress.global_step == 2 and (exp_copy / "train/gpt/last.safetensors").is_file()


def test_early_stop_on_similarity_needs_the_synthesis(exp_copy):
    from gsv.errors import GsvError
    from trainer.run import train

    with pytest.raises(GsvError, match="no-synth"):
        train("gpt", exp_copy, tiny_cfg("gpt", synth=False, early_stop_on="similarity"))


def test_resume_after_crash_gives_identical_steps(exp_copy, tmp_path, monkeypatch):
    import shutil

    from trainer import gpt_stage
    from trainer.run import train

    other = tmp_path / "other"
    shutil.copytree(exp_copy, other)
    cfg = dict(epochs=3, max_steps=7, batch_size=4, save_every_steps=2, val_fraction=0.2)
    full = train("gpt", exp_copy, tiny_cfg("gpt", **cfg))
    assert full.progress.global_step == 7

    real = gpt_stage.GPTStage.train_step
    calls = {"n": 0}

    def crashing(self, micro, step):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("simulated crash")
        return real(self, micro, step)

    monkeypatch.setattr(gpt_stage.GPTStage, "train_step", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train("gpt", other, tiny_cfg("gpt", **cfg))
    monkeypatch.setattr(gpt_stage.GPTStage, "train_step", real)
    from trainer.checkpointing import load_state

    assert load_state(other / "train/gpt/state-last.pt")["progress"]["global_step"] == 4
    resumed = train("gpt", other, tiny_cfg("gpt", **cfg))
    assert resumed.progress.global_step == 7 and [row["step"] for row in resumed.train_log] == [5, 6, 7]
    assert [round(r["loss/total"], 4) for r in resumed.train_log] == [round(r["loss/total"], 4) for r in full.train_log[4:]]
    a, b = _weights(exp_copy / "train/gpt/last.safetensors"), _weights(other / "train/gpt/last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["epoch"] for h in resumed.progress.history] == [h["epoch"] for h in full.progress.history]


def test_sovits_resume_is_exact(exp_copy, tmp_path):
    import shutil

    from trainer.run import train

    other = tmp_path / "other"
    shutil.copytree(exp_copy, other)
    cfg = dict(epochs=2, batch_size=4, val_fraction=0.2)
    train("sovits", exp_copy, tiny_cfg("sovits", max_steps=4, **cfg))
    train("sovits", other, tiny_cfg("sovits", max_steps=2, **cfg))  # stops (state saved) after 2 steps
    train("sovits", other, tiny_cfg("sovits", max_steps=4, **cfg))
    a, b = _weights(exp_copy / "train/sovits/last.safetensors"), _weights(other / "train/sovits/last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_write_is_atomic(tmp_path):
    from gsv.errors import CheckpointError
    from trainer.checkpointing import atomic_write, load_state, save_state, STATE_FORMAT, STATE_VERSION

    path = tmp_path / "state-last.pt"
    save_state(path, {"format": STATE_FORMAT, "format_version": STATE_VERSION, "progress": {"global_step": 1}})

    def dies_halfway(tmp):
        tmp.write_bytes(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies_halfway)
    assert load_state(path)["progress"]["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state-last.pt"]
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        load_state(path)


def test_kill_9_leaves_a_loadable_checkpoint(exp_copy):
    from trainer.checkpointing import load_state

    state = exp_copy / "train/gpt/state-last.pt"
    cmd = [sys.executable, "-m", "trainer", "gpt", "--exp", str(exp_copy), "--epochs", "50", "--batch-size", "2",
           "--grad-accum", "1", "--save-every-steps", "1", "--no-synth", "--device", "cpu", "--threads", "1",
           "--val-fraction", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not state.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert state.exists(), "no checkpoint written"
        time.sleep(0.7)  # well inside the run: the next writes are under way
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    st = load_state(state)
    assert st["progress"]["global_step"] >= 1
    assert main_resume(exp_copy, st["progress"]["global_step"] + 1) == st["progress"]["global_step"] + 1


def main_resume(exp, steps):
    from trainer.run import train

    return train("gpt", exp, tiny_cfg("gpt", epochs=50, batch_size=2, max_steps=steps, val_fraction=0.0)).progress.global_step


def test_early_stopping(exp_copy, monkeypatch):
    from trainer import gpt_stage
    from trainer.run import train

    vals = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    monkeypatch.setattr(gpt_stage.GPTStage, "validate", lambda self, b: {"val/loss": next(vals)})
    r = train("gpt", exp_copy, tiny_cfg("gpt", epochs=10, patience=2, val_fraction=0.2))
    assert r.stopped_early and len(r.progress.history) == 3 and r.progress.best_epoch == 1
    again = train("gpt", exp_copy, tiny_cfg("gpt", epochs=10, patience=2, val_fraction=0.2))
    assert again.progress.global_step == r.progress.global_step  # an early-stopped run is not continued


def test_validations_inside_the_training_phases_do_not_count_against_patience(exp_copy, monkeypatch):
    from trainer import gpt_stage
    from trainer.run import train
    from trainer.sovits_stage import SoVITSStage

    vals = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    monkeypatch.setattr(gpt_stage.GPTStage, "validate", lambda self, b: {"val/loss": next(vals)})
    # every validation is worse than the first, but all of them fall inside the (pretend) phases
    monkeypatch.setattr(gpt_stage.GPTStage, "patience_start_step", lambda self: 10**6)
    r = train("gpt", exp_copy, tiny_cfg("gpt", epochs=5, patience=2, val_fraction=0.2))
    assert not r.stopped_early and len(r.progress.history) == 5 and r.progress.best_epoch == 1
    # SoVITS: patience starts once the vocoder and prior phases are over
    stage = SoVITSStage.__new__(SoVITSStage)
    stage.cfg = tiny_cfg("sovits", vocoder_steps=30, prior_steps=12, warmup_steps=5)
    assert stage.patience_start_step() == 42
