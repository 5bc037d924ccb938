"""Named export modules: thin ``nn.Module`` wrappers that call the core models' own inference methods.

No model code is copied here: each wrapper only fixes the argument order and IO of one graph of
:mod:`export.graphs`.  :func:`sample_inputs` makes consistent random inputs for any graph and any
dynamic sizes; the exporter traces with it and the verifier compares runtimes with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from export.graphs import GRAPHS


@dataclass
class ExportModels:
    """The bundle's eager models a graph may hold (``GraphSpec.model`` names one); ``sv`` only for Pro."""

    gpt: nn.Module
    sovits: nn.Module
    sv: nn.Module | None = None

    @classmethod
    def from_bundle(cls, bundle) -> "ExportModels":
        return cls(bundle.load_gpt(), bundle.load_sovits(), bundle.load_sv() if bundle.is_pro else None)


class _LayerStack:
    """Per-layer cache tensors [B, H, T, Dh] presented to ``decode_step`` as one [L, B, H, T, Dh] cache.

    ``decode_step`` only indexes the cache by layer and reads its shape, so a sequence works; the
    graph then takes one input per layer and no stacked copy of the cache is ever made.
    """

    def __init__(self, tensors):
        self.tensors = tensors
        self.shape = (len(tensors), *tensors[0].shape)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tensors[i]


class GPTPrefillGraph(nn.Module):
    """(phones [B,Tx], phone_lens [B], bert [B,bert_dim,Tx], prompt [B,Ty], prompt_lens [B])
    -> (logits [B,V], k [L,B,H,S,Dh], v [L,B,H,S,Dh], seq_lens [B]) with S = Tx + Ty."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, phones, phone_lens, bert, prompt, prompt_lens):
        return self.gpt.prefill(phones, phone_lens, bert, prompt, prompt_lens)


class GPTDecodeStepGraph(nn.Module):
    """(tokens [B], audio_pos [B], kv_lens [B], past_k.0..L-1 [B,H,T,Dh], past_v.0..L-1 [B,H,T,Dh])
    -> (logits [B,V], new_k [L,B,H,Dh], new_v [L,B,H,Dh]); the caller writes new_k/new_v at kv_lens."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, tokens, audio_pos, kv_lens, *past):
        n = self.gpt.cfg.n_layer
        return self.gpt.decode_step(tokens, audio_pos, _LayerStack(past[:n]), _LayerStack(past[n:]), kv_lens)


class SpeakerEncoderGraph(nn.Module):
    """(refer [B,1025,Tr], refer_lens [B] (, sv [B,sv_dim] for Pro models)) -> ge [B,gin,1]."""

    def __init__(self, sovits):
        super().__init__()
        self.sovits = sovits

    def forward(self, refer, refer_lens, sv=None):
        return self.sovits.speaker_embedding(refer, sv, refer_lens)


class SpeakerVerificationGraph(nn.Module):
    """fbank [B,T,80] -> speaker-verification embedding [B,sv_dim] (Pro models' ERes2NetV2 trunk)."""

    def __init__(self, sv):
        super().__init__()
        self.trunk = sv.model

    def forward(self, fbank):
        return self.trunk(fbank)


class SoVITSWindowGraph(nn.Module):
    """(codes [B,W], code_lens [B], phones [B,Tp], phone_lens [B], ge [B,gin,1], noise [B,C,F], speed [])
    -> (z [B,C,F], frame_lens [B]); F = 2W at speed 1, int(2W / speed) + 1 otherwise."""

    def __init__(self, sovits):
        super().__init__()
        self.sovits = sovits

    def forward(self, codes, code_lens, phones, phone_lens, ge, noise, speed):
        z, mask = self.sovits.decode_latent(codes, phones, ge, noise, code_lens, phone_lens, speed)
        return z, mask.sum(dim=(1, 2)).to(torch.int64)


class SoVITSDecoderGraph(nn.Module):
    """(codes, code_lens, phones, phone_lens, refer [B,1025,Tr], refer_lens, (sv [B,sv_dim] for Pro,) noise, speed)
    -> (z, frame_lens, ge)."""

    def __init__(self, sovits):
        super().__init__()
        self.speaker = SpeakerEncoderGraph(sovits)
        self.window = SoVITSWindowGraph(sovits)

    def forward(self, codes, code_lens, phones, phone_lens, refer, refer_lens, *rest):
        sv, noise, speed = rest if len(rest) == 3 else (None, *rest)
        ge = self.speaker(refer, refer_lens, sv)
        z, frame_lens = self.window(codes, code_lens, phones, phone_lens, ge, noise, speed)
        return z, frame_lens, ge


class VocoderGraph(nn.Module):
    """(z [B,C,F], ge [B,gin,1], frame_lens [B], frame_from [B], trim [2]) -> audio [B, (F-trim[0]-trim[1])*640]."""

    def __init__(self, sovits):
        super().__init__()
        self.sovits = sovits

    def forward(self, z, ge, frame_lens, frame_from, trim):
        return self.sovits.vocode(z, ge, frame_lens, frame_from, (trim[0], trim[1]))


WRAPPERS = {cls.__name__: cls for cls in (GPTPrefillGraph, GPTDecodeStepGraph, SpeakerEncoderGraph,
                                           SpeakerVerificationGraph, SoVITSWindowGraph, SoVITSDecoderGraph,
                                           VocoderGraph)}


def build_wrapper(graph: str, models: ExportModels) -> nn.Module:
    spec = GRAPHS[graph]
    model = getattr(models, spec.model)
    if model is None:
        raise ValueError(f"graph {graph} needs the bundle's {spec.model} model")
    return WRAPPERS[spec.wrapper](model).eval()


# Sizes the exporter traces with: distinct, > 1 and unlike any constant, so no dimension is
# specialised by accident.
TRACE_SIZES = {"batch": 2, "phones": 13, "prompt": 7, "cache": 19, "codes": 11, "refer_frames": 37,
               "fbank_frames": 53, "speed": 1.0}


def sample_inputs(graph: str, sizes: dict, models: ExportModels, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random, mutually consistent inputs of ``graph`` (in spec order) for the given dynamic sizes.

    Lengths are random per row (the longest row fills the padded axis); ``sizes["speed"]`` sets the
    speed input of the SoVITS graphs (the noise then has the matching number of frames).
    """
    b = sizes["batch"]
    gpt_config, sovits_config = models.gpt.cfg, models.sovits.cfg

    def lens(n: int, low: int = 1) -> torch.Tensor:
        out = torch.randint(min(low, n), n + 1, (b,), generator=gen)
        out[0] = n
        return out

    def ids(high: int, *shape) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=gen)

    if graph == "gpt_prefill":
        tx, ty = sizes["phones"], sizes["prompt"]
        return (ids(gpt_config.phoneme_vocab_size, b, tx), lens(tx), torch.randn(b, gpt_config.bert_dim, tx, generator=gen),
                ids(gpt_config.eos, b, ty), lens(ty, 0))
    if graph == "gpt_decode":
        t, c = sizes["cache"], gpt_config
        past = [torch.randn(b, c.n_head, t, c.hidden_dim // c.n_head, generator=gen) for _ in range(2 * c.n_layer)]
        return (ids(c.eos, b), ids(t, b), lens(t), *past)
    s = sovits_config
    # a Pro model's speaker-verification embedding: non-negative time means of clipped ReLUs, O(1..10)
    sv = (5 * torch.rand(b, s.sv_dim, generator=gen),) if s.is_pro else ()
    if graph == "speaker_verification":
        return (torch.randn(b, sizes["fbank_frames"], models.sv.cfg.feat_dim, generator=gen) * 3.0,)
    if graph == "speaker_encoder":
        tr = sizes["refer_frames"]
        return torch.randn(b, s.spec_channels, tr, generator=gen).abs(), lens(tr, max(1, tr // 2)), *sv
    speed = float(sizes.get("speed", 1.0))
    tc, tp = sizes["codes"], sizes["phones"]
    frames = 2 * tc if speed == 1.0 else int(float(torch.tensor(2.0 * tc) / torch.tensor(speed))) + 1
    window = (ids(s.codebook_size, b, tc), lens(tc), ids(s.n_symbols, b, tp), lens(tp))
    noise = 0.5 * torch.randn(b, s.inter_channels, frames, generator=gen)
    speed_t = torch.tensor(speed, dtype=torch.float32)
    if graph == "sovits_window":
        return (*window, 0.1 * torch.randn(b, s.gin_channels, 1, generator=gen), noise, speed_t)
    if graph == "sovits_decoder":
        tr = sizes["refer_frames"]
        return (*window, torch.randn(b, s.spec_channels, tr, generator=gen).abs(), lens(tr, max(1, tr // 2)), *sv,
                noise, speed_t)
    if graph == "vocoder":
        frame_lens = 2 * lens(tc)
        z = torch.randn(b, s.inter_channels, 2 * tc, generator=gen)
        z = z * (torch.arange(2 * tc).view(1, 1, -1) < frame_lens.view(-1, 1, 1))  # z arrives zeroed past its length
        # traced with a real trim and no left padding (both are graph inputs: any values at run time)
        return (z, 0.1 * torch.randn(b, s.gin_channels, 1, generator=gen), frame_lens, torch.zeros(b, dtype=torch.long),
                torch.tensor([3, 2], dtype=torch.long))
    raise KeyError(graph)
