"""``gsv-train init``: a random-weights base bundle of a given architecture, for training from scratch.

No pretrained weights can ship with the project, so the demo trains a ``tiny`` configuration from
scratch; ``v2`` gives upstream's full sizes (random).  A bundle also needs a HuBERT (semantic
tokens) and a BERT (Chinese text features): unless local model folders are given, small randomly
initialised ``transformers`` models of the matching widths are written into the bundle, so the
whole pipeline runs offline.  Training hints for the discriminator size and the random-slice
length are recorded in the manifest's ``sources.train_hints`` and used as stage defaults.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dataclasses import replace

from gsv.errors import GsvError
from gsv.models.config import PRO_VERSIONS, GPTConfig, SoVITSConfig, SVConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchPreset:
    gpt: GPTConfig
    sovits: SoVITSConfig
    hubert_layers: int
    bert_layers: int
    disc_channel_divisor: int
    segment_frames: int
    sv: SVConfig = SVConfig()  # the speaker-verification network of Pro variants


VERSIONS = ("v2", *PRO_VERSIONS)


def pro_variant(sovits: SoVITSConfig, version: str) -> SoVITSConfig:
    """A preset's SoVITS as v2Pro/v2ProPlus, scaled as upstream's configs scale v2: gin twice the MRTE
    width (1024 vs 512), no dropout; ProPlus also a 1.5x wider first upsampler with a 20-tap kernel."""
    if version == "v2":
        return sovits
    cfg = replace(sovits, version=version, gin_channels=2 * sovits.mrte_hidden, p_dropout=0.0)
    if version == "v2ProPlus":
        cfg = replace(cfg, upsample_initial_channel=sovits.upsample_initial_channel * 3 // 2,
                      upsample_kernel_sizes=(20, *sovits.upsample_kernel_sizes[1:]))
    return cfg

def presets() -> dict[str, ArchPreset]:
    tiny_gpt = GPTConfig(hidden_dim=128, embedding_dim=128, n_head=4, n_layer=3, ffn_dim=512, bert_dim=32, dropout=0.1)
    tiny_sovits = SoVITSConfig(inter_channels=32, hidden_channels=48, filter_channels=96, n_heads=2, n_layers=2,
                               upsample_initial_channel=64, gin_channels=32, mrte_hidden=32, mrte_heads=2, ssl_dim=32,
                               resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3),), p_dropout=0.1,
                               segment_size=16 * 640)
    tiny_sv = SVConfig(m_channels=8, num_blocks=(1, 1, 2, 1), base_width=32, scale=2, expansion=2, embedding_size=16)
    return {
        "tiny": ArchPreset(tiny_gpt, tiny_sovits, hubert_layers=2, bert_layers=2, disc_channel_divisor=16,
                           segment_frames=16, sv=tiny_sv),
        # tiny with a 4x wider decoder (1.0M instead of 75k parameters, 8 channels at 32 kHz instead of 2):
        # per minute of CPU it learns to render a speaker several times faster (make demo's architecture)
        "small": ArchPreset(tiny_gpt, replace(tiny_sovits, upsample_initial_channel=256), hubert_layers=2,
                            bert_layers=2, disc_channel_divisor=16, segment_frames=16, sv=tiny_sv),
        "v2": ArchPreset(GPTConfig(), SoVITSConfig(), hubert_layers=1, bert_layers=2, disc_channel_divisor=1,
                         segment_frames=32),
    }


# ------------------------------------------------------------------------------------ tiny HF models
def write_random_hubert(path: Path, hidden: int, layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised HubertModel with chinese-hubert-base's frame rate (320-sample hop at
    16 kHz, 50 Hz) and ``hidden``-d output."""
    from transformers import HubertConfig, HubertModel

    heads = 4 if hidden % 4 == 0 else 1
    cfg = HubertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=2 * hidden, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=4 if hidden % 4 == 0 else 1, do_stable_layer_norm=False,
                       feat_extract_norm="group", hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                       feat_proj_dropout=0.0, layerdrop=0.0)
    torch.manual_seed(seed)
    HubertModel(cfg).save_pretrained(str(path))
    return path


_BERT_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789")
               + list(",.!?-'\"…;:()") + ["，", "。", "！", "？", "、"])


def write_random_bert(path: Path, hidden: int, layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised BertForMaskedLM with a character vocabulary (every CJK character is a
    token of its own, mostly [UNK]), enough for ``BertExtractor``'s one-vector-per-character rule."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        vocab = Path(td) / "vocab.txt"
        vocab.write_text("\n".join(_BERT_VOCAB) + "\n", "utf-8")
        tok = BertTokenizer(str(vocab), do_lower_case=True, tokenize_chinese_chars=True)
        tok.save_pretrained(str(path))
    heads = 4 if hidden % 4 == 0 else 1
    cfg = BertConfig(vocab_size=len(_BERT_VOCAB), hidden_size=hidden, num_hidden_layers=max(2, layers),
                     num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=512)
    torch.manual_seed(seed)
    BertForMaskedLM(cfg).save_pretrained(str(path))
    return path


# ------------------------------------------------------------------------------------ the base bundle
def init_bundle(out: str | Path, arch: str = "tiny", seed: int = 0, hubert: str | Path | None = None,
                bert: str | Path | None = None, force: bool = False, version: str = "v2",
                sv: str | Path | None = None):
    """Write a random-weights base bundle of architecture ``arch`` and model ``version`` (v2, v2Pro,
    v2ProPlus); Pro bases get a random speaker-verification network of the preset's size unless
    ``sv`` names an upstream one (pretrained_eres2netv2w24s4ep4.ckpt).  Returns the opened Bundle."""
    from gsv.checkpoint.bundle import write_bundle
    from gsv.models.gpt import Text2SemanticGPT
    from gsv.models.sovits.model import SoVITS

    table = presets()
    if arch not in table:
        raise GsvError(f"unknown architecture {arch!r} (choose from {', '.join(table)})")
    if version not in VERSIONS:
        raise GsvError(f"unknown model version {version!r} (choose from {', '.join(VERSIONS)})")
    if sv and version == "v2":
        raise GsvError("--sv is only for v2Pro/v2ProPlus bases")
    p = table[arch]
    sovits_cfg = pro_variant(p.sovits, version)
    torch.manual_seed(seed)
    gpt = Text2SemanticGPT(p.gpt)
    sovits = SoVITS(sovits_cfg, with_posterior=True)
    sv_parts = {}
    if version != "v2":
        sv_parts = _sv_parts(p.sv, sv, seed)
        if sv_parts["sv_config"].embedding_dim != sovits_cfg.sv_dim:
            sovits_cfg = replace(sovits_cfg, sv_dim=sv_parts["sv_config"].embedding_dim)
            torch.manual_seed(seed)
            sovits = SoVITS(sovits_cfg, with_posterior=True)
    hints = {"disc_channel_divisor": p.disc_channel_divisor, "segment_frames": p.segment_frames}
    if arch == "tiny":
        hints["cpu_threads"] = 1  # tiny models gain nothing from more, and a shared CPU makes extra threads spin
    with tempfile.TemporaryDirectory() as td:
        hub = Path(hubert) if hubert else write_random_hubert(Path(td) / "hubert", p.sovits.ssl_dim, p.hubert_layers, seed)
        brt = Path(bert) if bert else write_random_bert(Path(td) / "bert", p.gpt.bert_dim, p.bert_layers, seed)
        bundle = write_bundle(out, p.gpt, gpt.state_dict(), sovits_cfg, sovits.state_dict(),
                              sources={"kind": f"random-init:{arch}:{version}", "seed": seed, "train_hints": hints,
                                       "hubert": "given" if hubert else "random", "bert": "given" if bert else "random",
                                       **({"sv": "given" if sv else "random"} if sv_parts else {})},
                              hubert_dir=hub, bert_dir=brt, force=force, **sv_parts)
    log.info("wrote random %s %s base bundle %s", arch, version, bundle.path)
    return bundle


def _sv_parts(cfg: SVConfig, path: str | Path | None, seed: int) -> dict:
    """write_bundle's sv_config/sv_state: an upstream SV file, or a random network of ``cfg`` whose
    BatchNorm statistics are those of its own outputs on noise (so activations stay in range)."""
    if path:
        from gsv.checkpoint.upstream import load_sv

        up = load_sv(path)
        return {"sv_config": up.config, "sv_state": up.state_dict}
    from gsv.models.speaker_verification import SpeakerVerifier

    torch.manual_seed(seed)
    model = SpeakerVerifier(cfg)
    with torch.no_grad():  # one pass in train mode sets running statistics from real activations
        model.model.train()
        for mod in model.model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = 1.0
        model(0.1 * torch.randn(2, 32000))
        for mod in model.model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = 0.1
    return {"sv_config": cfg, "sv_state": model.model.eval().state_dict()}


def train_hints(bundle) -> dict:
    sources = bundle.manifest.get("sources") or {}
    hints = sources.get("train_hints") if isinstance(sources, dict) else None
    return dict(hints) if isinstance(hints, dict) else {}


