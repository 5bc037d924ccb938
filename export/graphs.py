"""Every exported graph, declared as data: opset, IO names, dtypes, dynamic axes, TensorRT profiles.

This table is the one place the exporter, the verifier, the TensorRT builder and the runtime
backends (through the bundle manifest, which records each artifact's IO) read graph interfaces
from.  Dimension names are either *constants* of the bundle's architecture (``n_layer``,
``hidden``, ``heads``, ``head_dim``, ``vocab``, ``bert_dim``, ``inter``, ``gin``, ``spec``; resolved from the configs) or
*dynamic axes* (everything else), which become ONNX ``dim_param`` names and TensorRT profile keys.
A tensor or graph with ``when="pro"`` exists only for v2Pro/v2ProPlus bundles (constant ``pro``).

Graphs (wrappers in :mod:`export.wrappers`; sampling is never inside a graph):

* ``gpt_prefill``: phones + BERT features + prompt tokens -> first logits and the KV cache.
* ``gpt_decode``: one token per row + the cache (one input per layer, so runtimes read the
  caller's cache in place) -> logits and the new keys/values.  ORT runs it with any cache length;
  TensorRT pins ``cache`` to one static length (min = opt = max) and the caller pre-allocates it.
* ``speaker_encoder``: reference spectrogram (+ its speaker-verification embedding for Pro models)
  -> ge (once per voice).
* ``speaker_verification`` (Pro only): 16 kHz fbank features -> speaker-verification embedding
  (ERes2NetV2; once per voice and reference).  The fbank itself stays outside the graph.
* ``sovits_decoder``: the issue's full form, codes + target phones + reference spectrogram -> z, ge.
* ``sovits_window``: the serving form, with the voice's ge as input.  Its codes are a streaming
  window ``left context | new tokens | lookahead`` (a whole segment is a window without context);
  the caller crops the audio of the new tokens.
* ``vocoder``: z, ge -> 32 kHz waveform (640 samples per frame; rows valid over [frame_from, frame_lens);
  ``trim`` frames at either end not rendered).

The z_p noise is an input (drawn per request outside the graph) so exported graphs are
deterministic and comparable with PyTorch sample for sample; ``speed`` is a 0-d float32 input.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gsv import constants as C

OPSET = 17  # LayerNormalization is a native op from 17 on (no decomposed LN for runtimes to re-fuse)
PRECISIONS = ("fp32", "int8", "fp16")
# TensorRT decode engines use one static cache length: rows are pre-allocated at this many positions
# (prompt phones + prompt tokens + up to 1500 generated tokens fit), attention reads all of it with
# per-row lengths masking the tail.  It must stay <= the GPT's 4000-row position table.
TRT_CACHE_LEN = 2048


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.  ``dims`` are names (constants or dynamic axes) or ints;
    ``per_layer`` tensors exist once per GPT layer, named ``name.format(layer)``."""

    name: str
    dtype: str  # "int64" | "float32"
    dims: tuple = ()
    per_layer: bool = False
    when: str | None = None  # a constant that must be non-zero for the tensor to exist (e.g. "pro")


@dataclass(frozen=True)
class GraphSpec:
    name: str
    model: str  # "gpt" | "sovits" | "sv": which bundle weights it holds
    wrapper: str  # class name in export.wrappers
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # TensorRT optimisation profile: dynamic axis -> (min, opt, max)
    trt_profile: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    # inputs TensorRT treats as shape tensors (their values size outputs): name -> (min, opt, max) values
    trt_shape_values: dict[str, tuple[tuple, tuple, tuple]] = field(default_factory=dict)
    quantize: bool = False  # gets an INT8 (dynamic quantisation) variant for CPU serving
    quantize_static: bool = False  # gets an INT8 variant by static quantisation with calibration data
    description: str = ""
    when: str | None = None  # a constant that must be non-zero for the graph to exist (e.g. "pro")


def _t(name, dtype, *dims, per_layer=False, when=None) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(dims), per_layer, when)


I64, F32 = "int64", "float32"

GRAPHS: dict[str, GraphSpec] = {
    g.name: g
    for g in (
        GraphSpec(
            "gpt_prefill", "gpt", "GPTPrefillGraph",
            inputs=(_t("phones", I64, "batch", "phones"), _t("phone_lens", I64, "batch"),
                    _t("bert", F32, "batch", "bert_dim", "phones"), _t("prompt", I64, "batch", "prompt"),
                    _t("prompt_lens", I64, "batch")),
            outputs=(_t("logits", F32, "batch", "vocab"), _t("k", F32, "n_layer", "batch", "heads", "seq", "head_dim"),
                     _t("v", F32, "n_layer", "batch", "heads", "seq", "head_dim"), _t("seq_lens", I64, "batch")),
            trt_profile={"batch": (1, 1, 8), "phones": (1, 96, 512), "prompt": (0, 128, 512)},
            quantize=True,
            description="phones [B,Tx] + BERT [B,bert_dim,Tx] + prompt tokens [B,Ty] -> logits [B,V], KV [L,B,H,Tx+Ty,Dh]",
        ),
        GraphSpec(
            "gpt_decode", "gpt", "GPTDecodeStepGraph",
            inputs=(_t("tokens", I64, "batch"), _t("audio_pos", I64, "batch"), _t("kv_lens", I64, "batch"),
                    _t("past_k.{}", F32, "batch", "heads", "cache", "head_dim", per_layer=True),
                    _t("past_v.{}", F32, "batch", "heads", "cache", "head_dim", per_layer=True)),
            outputs=(_t("logits", F32, "batch", "vocab"), _t("new_k", F32, "n_layer", "batch", "heads", "head_dim"),
                     _t("new_v", F32, "n_layer", "batch", "heads", "head_dim")),
            trt_profile={"batch": (1, 4, 16), "cache": (TRT_CACHE_LEN, TRT_CACHE_LEN, TRT_CACHE_LEN)},
            quantize=True,
            description="token [B] at audio position [B] + per-layer cache [B,H,T,Dh] with kv_lens [B] -> logits, new K/V [L,B,H,Dh]",
        ),
        GraphSpec(
            "speaker_encoder", "sovits", "SpeakerEncoderGraph",
            inputs=(_t("refer", F32, "batch", "spec", "refer_frames"), _t("refer_lens", I64, "batch"),
                    _t("sv", F32, "batch", "sv_dim", when="pro")),
            outputs=(_t("ge", F32, "batch", "gin", 1),),
            trt_profile={"batch": (1, 1, 4), "refer_frames": (8, 300, 1000)},
            description="linear spectrogram [B,1025,T] (+ Pro: sv embedding [B,sv_dim]) -> speaker vector ge [B,gin,1]",
        ),
        GraphSpec(
            "speaker_verification", "sv", "SpeakerVerificationGraph",
            inputs=(_t("fbank", F32, "batch", "fbank_frames", "mels"),),
            outputs=(_t("embedding", F32, "batch", "sv_dim"),),
            # 0.5 s .. 3 s (opt) .. 30 s of reference audio at 100 frames per second
            trt_profile={"batch": (1, 1, 4), "fbank_frames": (48, 298, 2998)},
            description="16 kHz log-mel fbank [B,T,80] -> ERes2NetV2 embedding [B,sv_dim] (time mean of the fused map)",
            when="pro",
        ),
        GraphSpec(
            "sovits_decoder", "sovits", "SoVITSDecoderGraph",
            inputs=(_t("codes", I64, "batch", "codes"), _t("code_lens", I64, "batch"),
                    _t("phones", I64, "batch", "phones"), _t("phone_lens", I64, "batch"),
                    _t("refer", F32, "batch", "spec", "refer_frames"), _t("refer_lens", I64, "batch"),
                    _t("sv", F32, "batch", "sv_dim", when="pro"),
                    _t("noise", F32, "batch", "inter", "frames"), _t("speed", F32)),
            outputs=(_t("z", F32, "batch", "inter", "frames"), _t("frame_lens", I64, "batch"),
                     _t("ge", F32, "batch", "gin", 1)),
            trt_profile={"batch": (1, 1, 4), "codes": (1, 64, 1500), "phones": (1, 64, 512),
                         "refer_frames": (8, 300, 1000), "frames": (2, 128, 3001)},
            description="codes [B,Tc] + target phones + reference spectrogram + noise [B,C,F] + speed -> z [B,C,F], ge",
        ),
        GraphSpec(
            "sovits_window", "sovits", "SoVITSWindowGraph",
            inputs=(_t("codes", I64, "batch", "codes"), _t("code_lens", I64, "batch"),
                    _t("phones", I64, "batch", "phones"), _t("phone_lens", I64, "batch"),
                    _t("ge", F32, "batch", "gin", 1), _t("noise", F32, "batch", "inter", "frames"),
                    _t("speed", F32)),
            outputs=(_t("z", F32, "batch", "inter", "frames"), _t("frame_lens", I64, "batch")),
            # opt = a streaming window (12 left + 16 new + 3 lookahead tokens); max = a whole segment
            trt_profile={"batch": (1, 4, 8), "codes": (1, 32, 1500), "phones": (1, 64, 512), "frames": (2, 64, 3001)},
            quantize_static=True,
            description="codes window [B,W] (left context | new | lookahead) + phones + ge + noise + speed -> z [B,C,F]",
        ),
        GraphSpec(
            "vocoder", "sovits", "VocoderGraph",
            inputs=(_t("z", F32, "batch", "inter", "frames"), _t("ge", F32, "batch", "gin", 1),
                    _t("frame_lens", I64, "batch"), _t("frame_from", I64, "batch"), _t("trim", I64, 2)),
            outputs=(_t("audio", F32, "batch", "samples"),),
            trt_profile={"batch": (1, 4, 8), "frames": (2, 64, 3001)},
            # the trim sizes the output: frames at each end, up to the whole profile's frames
            trt_shape_values={"trim": ((0, 0), (6, 6), (3001, 3001))},
            quantize_static=True,
            description="z [B,C,F] + ge -> audio [B, (F-trim[0]-trim[1])*640] (rows valid over [frame_from, "
                        "frame_lens); the trimmed frames' audio is not rendered)",
        ),
    )
}

# The graphs the runtime backends need (speaker_encoder/sovits_decoder are exported for completeness:
# ge-free serving and voice preparation without torch).
SERVING_GRAPHS = ("gpt_prefill", "gpt_decode", "sovits_window", "vocoder")


def constants(gpt_config, sovits_config) -> dict[str, int]:
    """Architecture constants that dimension names (and ``when`` conditions) may refer to."""
    return {
        "n_layer": gpt_config.n_layer, "hidden": gpt_config.hidden_dim, "vocab": gpt_config.vocab_size,
        "heads": gpt_config.n_head, "head_dim": gpt_config.hidden_dim // gpt_config.n_head,
        "bert_dim": gpt_config.bert_dim, "inter": sovits_config.inter_channels, "gin": sovits_config.gin_channels,
        "spec": sovits_config.spec_channels, "pro": int(sovits_config.is_pro), "sv_dim": sovits_config.sv_dim,
        "mels": C.SV_N_MELS,
    }


def applies(spec: GraphSpec, consts: dict[str, int]) -> bool:
    """Whether ``spec`` exists for the bundle these constants describe."""
    return spec.when is None or bool(consts.get(spec.when))


def expand(specs: tuple[TensorSpec, ...], consts: dict[str, int]) -> list[tuple[str, str, tuple]]:
    """(name, dtype, dims) of every tensor, per-layer tensors expanded; constant dims resolved to ints."""
    out = []
    for s in specs:
        if s.when is not None and not consts.get(s.when):
            continue
        dims = tuple(consts.get(d, d) if isinstance(d, str) else d for d in s.dims)
        names = [s.name.format(i) for i in range(consts["n_layer"])] if s.per_layer else [s.name]
        out.extend((n, s.dtype, dims) for n in names)
    return out


def input_names(spec: GraphSpec, consts) -> list[str]:
    return [n for n, _, _ in expand(spec.inputs, consts)]


def output_names(spec: GraphSpec, consts) -> list[str]:
    return [n for n, _, _ in expand(spec.outputs, consts)]


def dynamic_axes(spec: GraphSpec, consts) -> dict[str, dict[int, str]]:
    """torch.onnx dynamic_axes: every string dim left after resolving constants."""
    axes = {}
    for name, _, dims in expand(spec.inputs, consts) + expand(spec.outputs, consts):
        dyn = {i: d for i, d in enumerate(dims) if isinstance(d, str)}
        if dyn:
            axes[name] = dyn
    return axes


def io_manifest(spec: GraphSpec, consts) -> dict:
    """The IO description recorded with every artifact in the bundle manifest."""
    def side(specs):
        return [{"name": n, "dtype": t, "shape": list(d)} for n, t, d in expand(specs, consts)]

    return {"inputs": side(spec.inputs), "outputs": side(spec.outputs)}


def trt_shapes(spec: GraphSpec, consts) -> dict[str, tuple[tuple, tuple, tuple]]:
    """Per input: (min, opt, max) shapes of the TensorRT optimisation profile."""
    out = {}
    for name, _, dims in expand(spec.inputs, consts):
        shapes = []
        for k in range(3):
            shapes.append(tuple(d if isinstance(d, int) else spec.trt_profile[d][k] for d in dims))
        out[name] = tuple(shapes)
    return out
