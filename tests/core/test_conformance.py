"""Golden conformance cases computed by upstream GPT-SoVITS itself.

Every case found in every directory of GSV_CONFORMANCE_CASES (os.pathsep-separated; default: the
kit's visible ``cases`` (v2) and ``cases_pro`` (v2Pro/v2ProPlus and the speaker-verification model)
folders) is one test.  Checkpoints are rebuilt with the kit's fakeckpt.py
from the manifest and salt recorded in each case's sidecar, and their digest is checked first.
Token sequences, codes, targets, idx and acc must be exactly equal; floats within the sidecar's
atol/rtol.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gsv.audio import mel_spectrogram, spec_to_mel, spectrogram
from gsv.checkpoint.upstream import load_gpt, load_sovits, load_sv
from gsv.models.gpt import Text2SemanticGPT
from gsv.models.sovits.model import SoVITS
from gsv.models.speaker_verification import SpeakerVerifier, kaldi_fbank
from gsv.sampling import RowSampler, SamplingOptions, make_generator

from tests.conftest import KIT

pytestmark = pytest.mark.slow


def _case_dirs() -> list[Path]:
    env = os.environ.get("GSV_CONFORMANCE_CASES")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [KIT / "cases", KIT / "cases_pro"]


def _cases():
    out = []
    for d in _case_dirs():
        for sidecar in sorted(d.glob("*.json")):
            if sidecar.name == "index.json":
                continue
            meta = json.loads(sidecar.read_text())
            if "kind" not in meta:
                continue
            out.append(pytest.param(sidecar, id=f"{d.name}/{sidecar.stem}"))
    return out


def _kit_for(sidecar: Path, manifest: str) -> Path:
    """The kit folder holding ``manifest`` (and fakeckpt.py): next to the cases, above them, or the default kit."""
    for cand in (sidecar.parent, sidecar.parent.parent, KIT):
        if (cand / manifest).exists() and (cand / "fakeckpt.py").exists():
            return cand
    pytest.fail(f"manifest {manifest} for {sidecar.name} not found")


_MODELS: dict = {}


def _model(fake_ckpts, sidecar: Path, ck: dict):
    kit = _kit_for(sidecar, ck["manifest"])
    key = (str(kit), ck["manifest"], ck["salt"])
    if key not in _MODELS:
        digest = fake_ckpts.digest(ck["manifest"], ck["salt"], kit=kit)
        assert digest == ck["ckpt_sha256"], "fakeckpt produced different weights than the case was computed with"
        path = fake_ckpts.get(ck["manifest"], ck["salt"], kit=kit)
        if ck["manifest"].startswith("s1"):
            up = load_gpt(path)
            m = Text2SemanticGPT(up.config)
            m.load_state_dict(up.state_dict, strict=True)
        elif ck["manifest"].startswith("sv"):
            up = load_sv(path)
            m = SpeakerVerifier(up.config)
            m.model.load_state_dict(up.state_dict, strict=True)
        else:
            up = load_sovits(path)
            m = SoVITS(up.config)
            m.load_state_dict(up.state_dict, strict=True)
        _MODELS.clear()  # keep at most one full-size model alive
        _MODELS[key] = m.eval()
    return _MODELS[key]


def _check(name: str, got, want, rule) -> None:
    got = np.asarray(got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    if isinstance(rule, str) or rule is None:
        if np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)
        return
    atol, rtol = float(rule.get("atol", 0.0)), float(rule.get("rtol", 0.0))
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bad = err > atol + rtol * np.abs(want)
    assert not bad.any(), f"{name}: {bad.sum()} values off, max abs err {err.max():.3g} (atol {atol}, rtol {rtol})"
    m = re.search(r"\|_2\s*<=\s*([0-9.eE+-]+)", str(rule.get("also", "")))
    if m:
        rel = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12)
        assert rel <= float(m.group(1)), f"{name}: relative RMS error {rel:.3g} > {m.group(1)}"


def _t(z, meta, name):
    return torch.from_numpy(z[meta["inputs"][name]["npz_key"]])


@torch.no_grad()
def _run_s1_infer(model: Text2SemanticGPT, z, meta):
    p = meta["params"]
    phones, bert = _t(z, meta, "all_phoneme_ids"), _t(z, meta, "bert_feature")
    prompt = _t(z, meta, "prompts") if "prompts" in meta["inputs"] else torch.zeros(1, 0, dtype=torch.long)
    opts = SamplingOptions(top_k=int(p["top_k"]), top_p=float(p["top_p"]), temperature=float(p["temperature"]),
                           repetition_penalty=float(p["repetition_penalty"]),
                           max_tokens=min(int(p["early_stop_num"]) + 1, 1500) if int(p["early_stop_num"]) >= 0 else 1500)
    logits, k, v, lens = model.prefill(phones, torch.tensor([phones.shape[1]]), bert, prompt, torch.tensor([prompt.shape[1]]))
    cap = int(lens[0]) + opts.max_tokens + 1
    kc = torch.zeros(*k.shape[:3], cap, k.shape[4])  # [L, 1, H, T, Dh]
    vc = torch.zeros_like(kc)
    kc[:, :, :, : k.shape[3]], vc[:, :, :, : v.shape[3]] = k, v
    sampler = RowSampler.start(opts, make_generator(0), prompt[0])
    all_logits = [logits[0]]
    token, pos, n = sampler.step(logits[0]), prompt.shape[1], int(lens[0])
    while token is not None and not sampler.finished:
        lg, nk, nv = model.decode_step(torch.tensor([token]), torch.tensor([pos]), kc, vc, torch.tensor([n]))
        kc[:, 0, :, n], vc[:, 0, :, n] = nk[:, 0], nv[:, 0]
        n, pos = n + 1, pos + 1
        all_logits.append(lg[0])
        token = sampler.step(lg[0])
    idx = 0 if prompt.shape[1] == 0 else sampler.upstream_idx
    return {"first_logits": all_logits[0], "step_logits": torch.stack(all_logits), "last_logits": all_logits[-1],
            "tokens": torch.tensor(sampler.tokens, dtype=torch.long), "idx": np.array(idx, dtype=np.int64)}


@torch.no_grad()
def _run_s1_loss(model: Text2SemanticGPT, z, meta):
    names = ["phoneme_ids", "phoneme_ids_len", "semantic_ids", "semantic_ids_len", "bert_feature"]
    logits, targets = model.forward_train(*(_t(z, meta, n) for n in names))
    loss = F.cross_entropy(logits.permute(0, 2, 1), targets, reduction="sum")
    keep = targets != model.cfg.eos
    hit = (logits.topk(3, dim=-1).indices == targets.unsqueeze(-1)).any(-1)
    acc = (hit & keep).sum().float() / keep.sum().clamp(min=1)
    return {"loss": loss, "acc": acc, "targets": targets, "logits": logits}


@torch.no_grad()
def _run_s2(model: SoVITS | None, z, meta):
    kind = meta["kind"]
    if kind == "s2_spectrogram":
        wav = _t(z, meta, "wav")
        spec = spectrogram(wav)
        return {"spec": spec, "mel": mel_spectrogram(wav), "spec_to_mel": spec_to_mel(torch.from_numpy(z["out_spec"]))}
    if kind == "s2_extract_latent":
        return {"codes": model.extract_latent(_t(z, meta, "ssl"))}
    if kind == "s2_decode":
        return _run_s2_decode(model, z, meta)
    raise AssertionError(f"unknown case kind {kind}")


def _references(z, meta) -> list[tuple[str, str]]:
    """(suffix, name) of each reference of a decode case: "" for one, "_0", "_1", ... for several."""
    if "refer" in meta["inputs"]:
        return [("", "refer")]
    n = sum(1 for k in meta["inputs"] if re.fullmatch(r"refer_\d+", k))
    return [(f"_{i}", f"refer_{i}") for i in range(n)]


def _run_s2_decode(model: SoVITS, z, meta):
    p = meta["params"]
    refers, svs = [], []
    for suffix, name in _references(z, meta):
        refer = _t(z, meta, name)
        _check(f"{name} spectrogram", spectrogram(_t(z, meta, "refer_wav" + suffix)), refer.numpy(),
               {"atol": 2.5e-4, "rtol": 1e-4})
        refers.append(refer)
        if "sv_emb" + suffix in meta["inputs"]:
            svs.append(_t(z, meta, "sv_emb" + suffix))
    sv = svs if model.cfg.is_pro else None
    ge = torch.stack([model.speaker_embedding(r, s) for r, s in zip(refers, sv or [None] * len(refers))]).mean(0)
    audio = model.decode(_t(z, meta, "codes"), _t(z, meta, "text"), refers, sv_emb=sv,
                         noise_scale=float(p.get("noise_scale", 0.0)), speed=float(p.get("speed", 1.0)))
    return {"audio": audio, "ge": ge, "ge512": model.text_condition(ge)}


@torch.no_grad()
def _run_sv(model: SpeakerVerifier, z, meta):
    wav = _t(z, meta, "wav16k")
    return {"fbank": kaldi_fbank(wav), "embedding": model(wav)}


@pytest.mark.parametrize("sidecar", _cases())
def test_conformance_case(sidecar: Path, fake_ckpts):
    meta = json.loads(sidecar.read_text())
    z = np.load(sidecar.with_suffix(".npz"), allow_pickle=False)
    kind = meta["kind"]
    ck = meta.get("checkpoint")
    model = _model(fake_ckpts, sidecar, ck) if ck else None
    if kind == "s1_infer":
        got = _run_s1_infer(model, z, meta)
    elif kind == "s1_loss":
        got = _run_s1_loss(model, z, meta)
    elif kind == "sv_embedding":
        got = _run_sv(model, z, meta)
    else:
        got = _run_s2(model, z, meta)
    compare = meta.get("compare", {})
    for name, spec in meta["outputs"].items():
        assert name in got, f"no result for output {name}"
        _check(name, got[name], z[spec["npz_key"]], compare.get(name))
