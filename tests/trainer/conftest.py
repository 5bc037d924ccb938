"""Trainer fixtures: the espeak-ng synthetic set, a tiny random base bundle and a prepared experiment
(built once per session and treated as read-only; tests that train copy it first)."""
from __future__ import annotations

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

N_UTTERANCES = 12
N_EXTRA_GOOD = 2  # the noisy English recording and a Chinese line, besides the synthetic set


def write_wav(path: Path, samples: np.ndarray, sr: int) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="session")
def syn_data(tmp_path_factory) -> Path:
    """The synthetic English set (espeak-ng) with its .list file."""
    from trainer.synthetic import SyntheticDataError, make_dataset

    try:
        return make_dataset(tmp_path_factory.mktemp("syn"), N_UTTERANCES)
    except SyntheticDataError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    from trainer.init_base import init_bundle

    return init_bundle(tmp_path_factory.mktemp("base") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def bad_lines(syn_data, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A .list with the synthetic lines plus one bad line of every kind -> (list, {wav name: reason part})."""
    d = tmp_path_factory.mktemp("bad")
    src = syn_data.parent / "wavs" / "utt_00.wav"
    garbage = d / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    short = write_wav(d / "short.wav", 0.3 * np.sin(np.arange(8000) / 10.0), 32000)  # 0.25 s
    copies = {}
    for tag in ("lang", "empty", "zh"):
        copies[tag] = d / f"{tag}.wav"
        shutil.copy(src, copies[tag])
    noisy = write_wav(d / "noisy_clipped.wav",
                      np.clip(2.0 * np.sin(np.arange(48000) / 7.0) + np.random.default_rng(0).normal(0, 0.3, 48000), -1, 1),
                      48000)
    lines = syn_data.read_text().splitlines() + [
        f"{d / 'missing.wav'}|spk|en|A file that does not exist.",
        f"{garbage}|spk|en|Garbage bytes.",
        f"{short}|spk|en|Too short.",
        f"{copies['empty']}|spk|en|   ",
        f"{copies['lang']}|spk|xx|Some text in an unknown language.",
        "this line has no separators",
        f"{noisy}|spk|EN|A loud and noisy recording of a tone.",
        f"{copies['zh']}|spk|ZH|你好，世界。",
    ]
    lst = d / "with_bad.list"
    lst.write_text("\n".join(lines) + "\n", "utf-8")
    expect = {"missing.wav": "missing file", "garbage.wav": "unreadable", "short.wav": "too short",
              "empty.wav": "empty text", "lang.wav": "unknown language",
              "this line has no separators": "malformed line"}
    return lst, expect


@pytest.fixture(scope="session")
def tiny_exp(tiny_base, bad_lines, tmp_path_factory) -> Path:
    """The synthetic set (and the bad lines) prepared with the tiny base; read-only."""
    from trainer.prepare import prepare

    out = tmp_path_factory.mktemp("exp") / "exp"
    prepare(bad_lines[0], out, tiny_base.path, workers=1, progress=False)
    return out


@pytest.fixture
def exp_copy(tiny_exp, tmp_path) -> Path:
    """A private copy of the prepared experiment (training writes into it)."""
    dst = tmp_path / "exp"
    shutil.copytree(tiny_exp, dst)
    return dst


def tiny_cfg(stage: str, **kw):
    """Small, fast training configs for tests (no data replication, one thread-friendly batch)."""
    from trainer.config import GPTTrainConfig, SoVITSTrainConfig

    # fp32 whatever the CPU: numbers stay comparable across machines (bf16 is tested on its own)
    base = dict(epochs=1, batch_size=4, min_epoch_items=0, synth=False, log_every=1, patience=0, device="cpu",
                cpu_precision="fp32")
    base.update(kw)
    if stage == "gpt":
        base.setdefault("grad_accum", 1)
        return GPTTrainConfig(**base)
    return SoVITSTrainConfig(**base)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a shared machine it costs a lot."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
