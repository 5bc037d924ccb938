"""Architecture dataclasses, one per model, stored inside our bundles (``manifest.json``).

A bundle rebuilds a model with ``Cls.from_dict(manifest[...])``; upstream checkpoints are mapped
with ``from_upstream``.  Fields that only matter for training (dropout) are kept so a bundle can be
a fine-tuning base.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from gsv import constants as C


def _from_dict(cls, d: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kw = {}
    for f in fields(cls):
        if f.name in d:
            v = d[f.name]
            kw[f.name] = _tupleize(v) if isinstance(v, list) else v
    return cls(**kw)


def _tupleize(v):
    return tuple(_tupleize(x) if isinstance(x, list) else x for x in v)


@dataclass(frozen=True)
class GPTConfig:
    """Text-to-semantic GPT (upstream ``Text2SemanticDecoder``, config ``s1longer-v2.yaml``)."""

    phoneme_vocab_size: int = 732  # v1: 512
    vocab_size: int = 1025  # 1024 semantic codes + EOS
    eos: int = C.EOS_TOKEN
    embedding_dim: int = 512
    hidden_dim: int = 512
    n_head: int = 16
    n_layer: int = 24
    ffn_dim: int = 2048  # upstream ignores linear_units and uses 4 x hidden_dim
    bert_dim: int = C.BERT_DIM
    dropout: float = 0.1  # transformer + positional dropout used in training
    max_sec: int = 54  # data.max_sec; upstream's early_stop_num = 50 * max_sec
    # (sampling is per request: gsv.sampling.SamplingOptions; the checkpoint's inference.top_k is not
    # an architecture field)

    def __post_init__(self):
        if self.eos != self.vocab_size - 1:
            raise ValueError("GPTConfig: eos must be vocab_size - 1")
        if self.hidden_dim % self.n_head:
            raise ValueError("GPTConfig: hidden_dim must be divisible by n_head")
        if self.embedding_dim != self.hidden_dim:
            raise ValueError("GPTConfig: embedding_dim must equal hidden_dim")

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.n_head

    @classmethod
    def from_upstream(cls, config: dict[str, Any]) -> "GPTConfig":
        m = config["model"]
        hidden = int(m["hidden_dim"])
        return cls(
            phoneme_vocab_size=int(m["phoneme_vocab_size"]),
            vocab_size=int(m["vocab_size"]),
            eos=int(m["EOS"]),
            embedding_dim=int(m["embedding_dim"]),
            hidden_dim=hidden,
            n_head=int(m["head"]),
            n_layer=int(m["n_layer"]),
            ffn_dim=4 * hidden,
            bert_dim=int(m.get("bert_dim", C.BERT_DIM)),  # not an upstream key (always 1024 there)
            max_sec=int(config.get("data", {}).get("max_sec", 54)),
        )

    def to_upstream(self, inference: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``config`` dict upstream's loaders read (s1longer-v2.yaml layout).  ``inference`` is the
        source checkpoint's ``inference`` section when there is one (kept as it was, so a file round-trips);
        otherwise upstream's own (its default sampling top_k)."""
        from gsv.sampling import SamplingOptions

        return {
            "data": {"max_eval_sample": 8, "max_sec": self.max_sec, "num_workers": 4, "pad_val": self.eos},
            "inference": dict(inference) if inference is not None else {"top_k": SamplingOptions().top_k},
            "model": {
                "EOS": self.eos, "dropout": 0, "embedding_dim": self.embedding_dim, "head": self.n_head,
                "hidden_dim": self.hidden_dim, "linear_units": self.ffn_dim, "n_layer": self.n_layer,
                "phoneme_vocab_size": self.phoneme_vocab_size, "random_bert": 0, "vocab_size": self.vocab_size,
                **({"bert_dim": self.bert_dim} if self.bert_dim != C.BERT_DIM else {}),
            },
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        # bundles written before top_k left the architecture carry it: ignore it there
        return _from_dict(cls, {k: v for k, v in d.items() if k != "top_k"})


# SoVITS model versions: v1/v2, and the v2 variants that also condition on a speaker-verification
# embedding (upstream's ``v2pro_set``); v2ProPlus differs from v2Pro only in its vocoder sizes.
SOVITS_VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus")
PRO_VERSIONS = ("v2Pro", "v2ProPlus")


@dataclass(frozen=True)
class SoVITSConfig:
    """SoVITS generator (upstream ``SynthesizerTrn`` with ``configs/s2.json`` / ``s2v2Pro(Plus).json``)."""

    version: str = "v2"  # model version: v1, v2, v2Pro or v2ProPlus (Pro: speaker-verification conditioning)
    n_symbols: int = 732  # v1: 322
    spec_channels: int = C.SPEC_CHANNELS
    ref_enc_bins: int = C.REF_ENC_BINS_V2  # v1: all 1025 bins
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    p_dropout: float = 0.1
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (10, 8, 2, 2, 2)
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 2, 2)
    gin_channels: int = 512  # v1/v2: must equal mrte_hidden (MRTE adds ge to its hidden features); Pro: 1024
    mrte_hidden: int = 512  # Pro models project ge to this width (ge_to512) before the MRTE
    mrte_heads: int = 4
    ssl_dim: int = C.SSL_DIM
    codebook_size: int = C.SEMANTIC_VOCAB
    semantic_frame_rate: str = "25hz"
    sampling_rate: int = C.SAMPLE_RATE
    hop_length: int = C.HOP_LENGTH
    filter_length: int = C.N_FFT
    win_length: int = C.WIN_LENGTH
    n_mel_channels: int = C.N_MELS
    segment_size: int = 20480  # training segment in samples (32 frames)
    n_speakers: int = 300
    sv_dim: int = C.SV_EMBEDDING_DIM  # Pro only: width of the speaker-verification embedding (sv_emb input)

    def __post_init__(self):
        if self.version not in SOVITS_VERSIONS:
            raise ValueError(f"SoVITSConfig: unsupported version {self.version!r}")
        if self.semantic_frame_rate not in ("25hz", "50hz"):
            raise ValueError("SoVITSConfig: semantic_frame_rate must be 25hz or 50hz")
        if not self.is_pro and self.gin_channels != self.mrte_hidden:
            raise ValueError("SoVITSConfig: gin_channels must equal mrte_hidden")
        prod = 1
        for r in self.upsample_rates:
            prod *= r
        if prod != self.hop_length:
            raise ValueError("SoVITSConfig: prod(upsample_rates) must equal hop_length")

    @property
    def samples_per_frame(self) -> int:
        return self.hop_length

    @property
    def is_pro(self) -> bool:
        """True for v2Pro/v2ProPlus: ge also depends on a speaker-verification embedding."""
        return self.version in PRO_VERSIONS

    @property
    def symbol_version(self) -> str:
        """Phone symbol table of the text encoder (every v2 variant uses the v2 table)."""
        return "v1" if self.version == "v1" else "v2"

    @classmethod
    def from_upstream(cls, hps: dict[str, Any], version: str) -> "SoVITSConfig":
        m, d = hps["model"], hps["data"]
        return cls(
            version=version,
            n_symbols=322 if version == "v1" else 732,
            spec_channels=int(d["filter_length"]) // 2 + 1,
            ref_enc_bins=int(d["filter_length"]) // 2 + 1 if version == "v1" else C.REF_ENC_BINS_V2,
            inter_channels=int(m["inter_channels"]),
            hidden_channels=int(m["hidden_channels"]),
            filter_channels=int(m["filter_channels"]),
            n_heads=int(m["n_heads"]),
            n_layers=int(m["n_layers"]),
            kernel_size=int(m["kernel_size"]),
            p_dropout=float(m["p_dropout"]),
            resblock=str(m["resblock"]),
            resblock_kernel_sizes=_tupleize(list(m["resblock_kernel_sizes"])),
            resblock_dilation_sizes=_tupleize(list(m["resblock_dilation_sizes"])),
            upsample_rates=_tupleize(list(m["upsample_rates"])),
            upsample_initial_channel=int(m["upsample_initial_channel"]),
            upsample_kernel_sizes=_tupleize(list(m["upsample_kernel_sizes"])),
            gin_channels=int(m.get("gin_channels", 512)),
            # not upstream keys (fixed there); present only in files of non-standard sizes we wrote
            mrte_hidden=int(m.get("mrte_hidden", 512)),
            mrte_heads=int(m.get("mrte_heads", 4)),
            ssl_dim=int(m.get("ssl_dim", C.SSL_DIM)),
            semantic_frame_rate="25hz",  # upstream's loader forces 25hz
            sampling_rate=int(d["sampling_rate"]),
            hop_length=int(d["hop_length"]),
            filter_length=int(d["filter_length"]),
            win_length=int(d["win_length"]),
            n_mel_channels=int(d.get("n_mel_channels", C.N_MELS)),
            segment_size=int(hps.get("train", {}).get("segment_size", 20480)),
            n_speakers=int(d.get("n_speakers", 300)),
            sv_dim=int(m.get("sv_dim", C.SV_EMBEDDING_DIM)),  # not an upstream key (20480 there)
        )

    def to_upstream_model(self) -> dict[str, Any]:
        """The ``model`` section of upstream's s2.json."""
        return {
            "inter_channels": self.inter_channels, "hidden_channels": self.hidden_channels,
            "filter_channels": self.filter_channels, "n_heads": self.n_heads, "n_layers": self.n_layers,
            "kernel_size": self.kernel_size, "p_dropout": self.p_dropout, "resblock": self.resblock,
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(x) for x in self.resblock_dilation_sizes],
            "upsample_rates": list(self.upsample_rates), "upsample_initial_channel": self.upsample_initial_channel,
            "upsample_kernel_sizes": list(self.upsample_kernel_sizes), "n_layers_q": 3,
            "use_spectral_norm": False, "gin_channels": self.gin_channels,
            "semantic_frame_rate": self.semantic_frame_rate, "freeze_quantizer": True, "version": self.version,
            **{k: getattr(self, k) for k, default in (("mrte_hidden", 512), ("mrte_heads", 4), ("ssl_dim", C.SSL_DIM),
                                                      ("sv_dim", C.SV_EMBEDDING_DIM))
               if getattr(self, k) != default},
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SoVITSConfig":
        return _from_dict(cls, d)


@dataclass(frozen=True)
class SVConfig:
    """Speaker-verification network of v2Pro/v2ProPlus (upstream ``ERes2NetV2(baseWidth=24, scale=4,
    expansion=4)``, file ``pretrained_eres2netv2w24s4ep4.ckpt``).  Only the trunk up to the fused
    layer-3/4 map is used (upstream's ``forward3``); its time average is the embedding."""

    m_channels: int = 64
    feat_dim: int = C.SV_N_MELS
    num_blocks: tuple[int, ...] = (3, 4, 6, 3)
    base_width: int = 24
    scale: int = 4
    expansion: int = 4
    embedding_size: int = 192  # seg_1's output: in the upstream file, unused by forward3 (not kept)

    def __post_init__(self):
        if len(self.num_blocks) != 4 or min(self.num_blocks) < 1:
            raise ValueError("SVConfig: num_blocks must be four positive counts")
        if self.feat_dim % 8:
            raise ValueError("SVConfig: feat_dim must be divisible by 8 (three stride-2 stages)")
        if self.stage_width(0) < 1:
            raise ValueError("SVConfig: base_width too small for m_channels")

    def stage_width(self, stage: int) -> int:
        """Width of one of the ``scale`` branches of a block of stage 0..3 (upstream: floor(planes * baseWidth / 64))."""
        return (self.m_channels * 2**stage * self.base_width) // 64

    @property
    def embedding_dim(self) -> int:
        """Channels of the last stage x mel rows left after three stride-2 stages (20480 at full size)."""
        return self.m_channels * 8 * self.expansion * (self.feat_dim // 8)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SVConfig":
        return _from_dict(cls, d)
