"""Shared fixtures: the conformance kit, fake upstream checkpoints (built once per session), tiny models."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
KIT = REPO.parent / "shared" / "conformance"


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_trt = has_cuda
    except Exception:
        has_trt = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA GPU"))


def load_fakeckpt(kit: Path = KIT):
    """Import the kit's fakeckpt.py by path (it is data of the kit, not part of our packages)."""
    spec = importlib.util.spec_from_file_location("gsv_kit_fakeckpt", kit / "fakeckpt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeCheckpoints:
    """Builds upstream-format checkpoints with the kit's generator, once per (manifest, salt, options)."""

    def __init__(self, root: Path):
        self.root = root
        self._made: dict[tuple, Path] = {}

    def get(self, manifest: str = "s2_v2.json", salt: str = "", include_stripped: bool = False,
            magic: str | None = None, kit: Path = KIT) -> Path:
        key = (str(kit), manifest, salt, include_stripped, magic)
        if key not in self._made:
            import json

            fk = load_fakeckpt(kit)
            man = json.loads((kit / manifest).read_text())
            tensors = fk.make_tensors(man, salt, include_stripped)
            ext = ".pth" if manifest.startswith("s2") else ".ckpt"
            out = self.root / f"{Path(manifest).stem}-{salt or 'visible'}{'-full' if include_stripped else ''}{'-' + magic if magic else ''}{ext}"
            fk.write(man, tensors, str(out), magic)
            self._made[key] = out
            self._made[key + ("digest",)] = fk.digest(man, tensors)
        return self._made[key]

    def digest(self, manifest: str, salt: str, kit: Path = KIT) -> str:
        self.get(manifest, salt, kit=kit)
        return self._made[(str(kit), manifest, salt, False, None, "digest")]


@pytest.fixture(scope="session")
def fake_ckpts(tmp_path_factory) -> FakeCheckpoints:
    return FakeCheckpoints(tmp_path_factory.mktemp("fakeckpt"))


@pytest.fixture(scope="session")
def kit() -> Path:
    if not (KIT / "fakeckpt.py").exists():
        pytest.skip(f"conformance kit not found at {KIT}")
    return KIT


# ------------------------------------------------------------------------------ tiny models
def tiny_gpt_config(**kw):
    from gsv.models.config import GPTConfig

    base = dict(hidden_dim=64, embedding_dim=64, n_head=4, n_layer=2, ffn_dim=256, bert_dim=32, dropout=0.0)
    base.update(kw)
    return GPTConfig(**base)


def tiny_sovits_config(**kw):
    from gsv.models.config import SoVITSConfig

    base = dict(inter_channels=16, hidden_channels=32, filter_channels=64, n_heads=2, n_layers=2,
                upsample_initial_channel=32, gin_channels=32, mrte_hidden=32, mrte_heads=2, ssl_dim=32,
                resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3),), p_dropout=0.0)
    base.update(kw)
    return SoVITSConfig(**base)


def tiny_pro_configs(version: str = "v2Pro"):
    """(SoVITSConfig, SVConfig) of a tiny v2Pro/v2ProPlus model: gin wider than the MRTE (as 1024 vs 512),
    ProPlus with a wider first upsampler and a longer first kernel, a small ERes2NetV2."""
    from gsv.models.config import SVConfig

    sv = SVConfig(m_channels=8, num_blocks=(1, 1, 2, 1), base_width=32, scale=2, expansion=2, embedding_size=16)
    kw = dict(version=version, gin_channels=48, mrte_hidden=32, sv_dim=sv.embedding_dim)
    if version == "v2ProPlus":
        kw.update(upsample_initial_channel=48, upsample_kernel_sizes=(20, 16, 8, 2, 2))
    return tiny_sovits_config(**kw), sv


def tiny_sv(cfg, seed: int = 0):
    from gsv.models.speaker_verification import SpeakerVerifier

    torch.manual_seed(seed)
    m = SpeakerVerifier(cfg)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained network has
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.05)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def tiny_gpt(seed: int = 0, **kw):
    from gsv.models.gpt import Text2SemanticGPT

    torch.manual_seed(seed)
    return Text2SemanticGPT(tiny_gpt_config(**kw)).eval()


def tiny_sovits(seed: int = 0, with_posterior: bool = False, **kw):
    from gsv.models.sovits.model import SoVITS

    torch.manual_seed(seed)
    m = SoVITS(tiny_sovits_config(**kw), with_posterior=with_posterior)
    with torch.no_grad():  # the zero-initialised flow output layers would make the flow an identity
        for p in m.flow.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m.eval()


def make_tiny_bundle(path, seed: int = 0, version: str = "v2", **kw):
    """A complete bundle of tiny random models (no HuBERT/BERT folders unless given in kw); ``version``
    v2Pro/v2ProPlus adds a tiny speaker-verification network."""
    from dataclasses import asdict

    from gsv.checkpoint.bundle import write_bundle

    g = tiny_gpt(seed)
    if version in ("v2Pro", "v2ProPlus"):
        sovits_cfg, sv_cfg = tiny_pro_configs(version)
        s = tiny_sovits(seed, **{k: v for k, v in asdict(sovits_cfg).items() if k != "version"}, version=version)
        sv = tiny_sv(sv_cfg, seed)
        kw.update(sv_config=sv_cfg, sv_state=sv.model.state_dict())
    else:
        s = tiny_sovits(seed)
    return write_bundle(path, g.cfg, g.state_dict(), s.cfg, s.state_dict(), sources={"kind": "tiny-random"}, **kw)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A session-wide tiny bundle (treat as read-only; copy it to modify)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session", params=["v2Pro", "v2ProPlus"])
def tiny_pro_bundle(request, tmp_path_factory, tiny_models_dir):
    """Tiny v2Pro and v2ProPlus bundles with tiny HuBERT/BERT (treat as read-only)."""
    hubert, bert = tiny_models_dir
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / f"tiny_{request.param}", version=request.param,
                            hubert_dir=hubert, bert_dir=bert)


@pytest.fixture(scope="session")
def full_bundle(tmp_path_factory, fake_ckpts):
    """A full-size bundle imported from the kit's fake upstream v2 checkpoints (slow to build)."""
    from gsv.checkpoint.bundle import write_bundle
    from gsv.checkpoint.upstream import load_gpt, load_sovits

    g, s = load_gpt(fake_ckpts.get("s1_v2.json")), load_sovits(fake_ckpts.get("s2_v2.json"))
    return write_bundle(tmp_path_factory.mktemp("bundles") / "full", g.config, g.state_dict, s.config, s.state_dict,
                        sources={"kind": "fakeckpt"})


def make_full_pro_bundle(fake_ckpts, path, version: str, **kw):
    """A full-size v2Pro/v2ProPlus bundle from the kit's fake upstream SoVITS, GPT and SV files."""
    from gsv.checkpoint.bundle import write_bundle
    from gsv.checkpoint.upstream import load_gpt, load_sovits, load_sv

    g, s = load_gpt(fake_ckpts.get("s1_v2.json")), load_sovits(fake_ckpts.get(f"s2_{version}.json"))
    sv = load_sv(fake_ckpts.get("sv_eres2netv2.json"))
    return write_bundle(path, g.config, g.state_dict, s.config, s.state_dict, sources={"kind": "fakeckpt"},
                        sv_config=sv.config, sv_state=sv.state_dict, **kw)


@pytest.fixture(scope="session", params=["v2Pro", "v2ProPlus"])
def full_pro_bundle(request, tmp_path_factory, fake_ckpts):
    """Full-size v2Pro and v2ProPlus bundles of the kit's fake files (slow to build; read-only)."""
    return make_full_pro_bundle(fake_ckpts, tmp_path_factory.mktemp("bundles") / f"full_{request.param}", request.param)


# ------------------------------------------------------------------------------ tiny HuBERT / BERT
TINY_BERT_CHARS = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吗城音思非热结每往且先讲语"
TINY_BERT_PUNCT = ",.!?-…"


def make_tiny_bert(path, hidden: int = 32, seed: int = 0):
    """A random BERT (chinese-roberta layout) with a per-character vocabulary, saved to ``path``."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(TINY_BERT_CHARS + TINY_BERT_PUNCT))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", "utf-8")
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=512)
    BertForMaskedLM(cfg).eval().save_pretrained(path)
    BertTokenizer(str(path / "vocab.txt"), do_lower_case=False).save_pretrained(path)
    return path


def make_tiny_hubert(path, hidden: int = 32, seed: int = 0):
    """A random HuBERT (chinese-hubert-base layout: 7 conv layers, 320x downsampling) saved to ``path``."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    cfg = HubertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * hidden,
                       conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                       feat_extract_norm="group", do_stable_layer_norm=False)
    HubertModel(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return make_tiny_hubert(root / "hubert"), make_tiny_bert(root / "bert")


@pytest.fixture(scope="session")
def tiny_full_bundle(tmp_path_factory, tiny_models_dir):
    """Tiny bundle with tiny HuBERT and BERT folders (prompted voices, Chinese BERT features)."""
    hubert, bert = tiny_models_dir
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny_full", hubert_dir=hubert, bert_dir=bert)


def speechlike(seconds: float = 4.0, sr: int = 16000, seed: int = 0):
    """A deterministic voiced-speech-like signal (harmonics with a moving pitch and syllable envelope)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 * (1 + np.sin(2 * np.pi * 3.5 * t)) ** 2
    x = 0.25 * x * env / np.abs(x).max() + 0.003 * rng.standard_normal(t.size)
    return x.astype(np.float32), sr


def wav_bytes(x, sr) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()
