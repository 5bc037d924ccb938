"""gsv-train prepare on the synthetic set: features, bad lines, quality report, resume, workers, CLI."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tests.trainer.conftest import N_EXTRA_GOOD, N_UTTERANCES


def test_prepare_writes_features_and_reports_bad_lines(tiny_exp, bad_lines, tiny_base):
    index = json.loads((tiny_exp / "dataset.json").read_text())
    names = {it["name"] for it in index["items"]}
    assert {f"utt_{i:02d}.wav" for i in range(N_UTTERANCES)} <= names
    assert "noisy_clipped.wav" in names  # usable, but flagged by the quality report
    reasons = {os.path.basename(s["wav"]) or s["wav"]: s["reason"] for s in index["skipped"]}
    for name, part in bad_lines[1].items():
        assert part in reasons[name], (name, reasons[name])
    assert len(index["items"]) == N_UTTERANCES + N_EXTRA_GOOD
    zh = next(it for it in index["items"] if it["name"] == "zh.wav")
    assert zh["lang"] == "zh" and zh["has_bert"] and zh["word2ph"]
    assert index["base_id"] == tiny_base.bundle_id

    from safetensors import safe_open

    item = next(it for it in index["items"] if it["name"] == "utt_01.wav")
    with safe_open(str(tiny_exp / item["file"]), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    cfg = tiny_base.sovits_config
    assert t["ssl"].shape[0] == cfg.ssl_dim and t["spec"].shape[0] == cfg.spec_channels
    assert t["wav"].dtype == torch.int16 and abs(t["wav"].numel() / 32000 - item["seconds"]) < 1e-3
    assert t["spec"].shape[1] == item["frames"] == t["wav"].numel() // 640
    assert abs(t["ssl"].shape[1] - t["spec"].shape[1]) <= 1  # HuBERT 50 Hz vs spectrogram frames
    assert t["semantic"].numel() == t["ssl"].shape[1] // 2 == item["n_tokens"]
    assert int(t["semantic"].max()) < cfg.codebook_size
    assert t["phones"].numel() == item["n_phones"] and "bert" not in t  # English: no BERT features
    # the semantic tokens are the base quantizer's codes of the stored HuBERT features
    codes = tiny_base.load_sovits().extract_latent(t["ssl"].unsqueeze(0))[0, 0]
    assert torch.equal(codes, t["semantic"])
    with safe_open(str(tiny_exp / zh["file"]), "pt") as f:  # BERT features only for zh, one per phone
        assert tuple(f.get_tensor("bert").shape) == (tiny_base.gpt_config.bert_dim, zh["n_phones"])
    # upstream's text files
    sem = (tiny_exp / "6-name2semantic.tsv").read_text().splitlines()
    assert sem[0] == "item_name\tsemantic_audio" and len(sem) == len(index["items"]) + 1
    assert len((tiny_exp / "2-name2text.txt").read_text().splitlines()) == len(index["items"])


def test_quality_report_per_file_and_total(tiny_exp):
    q = json.loads((tiny_exp / "quality.json").read_text())
    files = {f["name"]: f for f in q["files"]}
    clean, bad = files["utt_00.wav"], files["noisy_clipped.wav"]
    for key in ("clipped", "snr_db", "silence", "dc_offset", "sample_rate", "noise_floor_dbfs", "seconds"):
        assert key in clean
    assert clean["sample_rate"] == 22050 and not clean["warnings"]
    assert bad["sample_rate"] == 48000 and bad["clipped"] > 0.01
    assert any("clipped" in w for w in bad["warnings"]) and any("noisy" in w for w in bad["warnings"])
    s = q["summary"]
    assert s["files"] >= N_UTTERANCES + N_EXTRA_GOOD and 0.3 < s["usable_minutes"] < 2.0 and s["clipped_files"] == 1
    assert any("usable minutes" in w for w in s["warnings"])  # under a minute of speech


def test_rerun_skips_finished_items(tiny_exp, bad_lines, tiny_base, tmp_path):
    from trainer.prepare import prepare

    exp = tmp_path / "exp"
    shutil.copytree(tiny_exp, exp)
    before = {p.name: p.stat().st_mtime_ns for p in (exp / "data").iterdir()}
    s = prepare(bad_lines[0], exp, tiny_base.path, progress=False)
    assert s.reused == len(s.items) == N_UTTERANCES + N_EXTRA_GOOD
    assert {p.name: p.stat().st_mtime_ns for p in (exp / "data").iterdir()} == before
    # an item whose text changed is recomputed
    lst = tmp_path / "changed.list"
    lines = bad_lines[0].read_text().splitlines()
    lines[0] = lines[0].rsplit("|", 1)[0] + "|A different sentence now."
    lst.write_text("\n".join(lines) + "\n")
    s = prepare(lst, exp, tiny_base.path, progress=False)
    assert s.reused == len(s.items) - 1


def test_parallel_workers_match_serial(syn_data, tiny_base, tiny_exp, tmp_path):
    from safetensors.torch import load_file

    from trainer.prepare import prepare

    lst = tmp_path / "three.list"
    lst.write_text("\n".join(syn_data.read_text().splitlines()[:3]) + "\n")
    s = prepare(lst, tmp_path / "par", tiny_base.path, workers=2, progress=False)
    assert len(s.items) == 3 and s.reused == 0
    for it in s.items:
        a, b = load_file(str(tmp_path / "par" / it["file"])), load_file(str(tiny_exp / it["file"]))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k])


def test_cli_prepare_errors_are_one_line(tmp_path, tiny_base, capsys):
    from trainer.cli import main

    rc = main(["prepare", "--list", str(tmp_path / "nope.list"), "--out", str(tmp_path / "e"),
               "--base", str(tiny_base.path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("gsv-train: error:") and "nope.list" in err[0]
    rc = main(["sovits", "--exp", str(tmp_path / "not-prepared"), "--epochs", "1"])
    assert rc == 2 and "prepare" in capsys.readouterr().err


def test_synthetic_needs_espeak(monkeypatch, tmp_path):
    import shutil as sh

    from trainer.synthetic import SyntheticDataError, make_dataset

    monkeypatch.setattr(sh, "which", lambda name: None)
    with pytest.raises(SyntheticDataError, match="espeak-ng is not installed"):
        make_dataset(tmp_path, 2)


def test_multi_voice_dataset_names_one_speaker_per_voice(tmp_path):
    import shutil as sh

    import soundfile as sf

    from trainer.synthetic import PRETRAIN_VOICES, SENTENCES, make_multi_voice_dataset

    if sh.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    assert "en-us" not in PRETRAIN_VOICES  # the demo's own speaker stays out of the base's data
    path = make_multi_voice_dataset(tmp_path, ("en-gb+m3", "en-us+f3"), count=2)
    rows = [line.split("|") for line in path.read_text().splitlines()]
    assert [(r[1], r[3]) for r in rows] == [(v, t) for v in ("en-gb+m3", "en-us+f3") for t in SENTENCES[:2]]
    names = [r[0].rsplit("/", 1)[-1] for r in rows]
    assert len(set(names)) == 4  # file names are unique across voices (prepare keys items by them)
    a, b = (sf.read(rows[i][0])[0] for i in (0, 2))  # one sentence, two voices: two different signals
    assert a.size > 1000 and b.size > 1000 and (a.size != b.size or not (a == b).all())


def test_gpt_prompt_pairs_put_another_utterance_of_the_speaker_in_front(tiny_exp):
    """--prompt-pairs: a share of the items is the inference layout (prompt ++ target) with another item
    of the same speaker; 0 leaves every item alone; the choice changes with the epoch."""
    from trainer.data import Experiment, GPTDataset

    exp = Experiment(tiny_exp, json.loads((tiny_exp / "dataset.json").read_text()))
    items = [it for it in exp.items if it["name"].startswith("utt_")]  # one speaker, English
    plain = GPTDataset(exp, items)
    paired = GPTDataset(exp, items, prompt_pairs=1.0, seed=3)
    assert all(plain.prompt_of(i) is None for i in range(len(items)))
    for i in range(len(items)):
        j = paired.prompt_of(i)
        assert j is not None and j != i and items[j].get("speaker") == items[i].get("speaker")
        phones, semantic, bert = paired[i]
        p_phones, p_semantic, _ = plain[j]
        t_phones, t_semantic, _ = plain[i]
        assert torch.equal(phones, torch.cat([p_phones, t_phones]))
        assert torch.equal(semantic, torch.cat([p_semantic, t_semantic])) and bert is None  # English: no BERT
    half = GPTDataset(exp, items, prompt_pairs=0.5, seed=3)
    chosen = [half.prompt_of(i) is not None for i in range(len(items))]
    assert any(chosen) and not all(chosen)
    before = [paired.prompt_of(i) for i in range(len(items))]
    paired.set_epoch(1)
    assert [paired.prompt_of(i) for i in range(len(items))] != before
    capped = GPTDataset(exp, items, prompt_pairs=1.0, max_tokens=max(int(it["n_tokens"]) for it in items))
    assert all(capped.prompt_of(i) is None for i in range(len(items)))  # no pair fits the GPT's length limit
