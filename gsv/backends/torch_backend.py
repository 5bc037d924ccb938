"""PyTorch backend: the eager models, the reference every other backend is verified against."""
from __future__ import annotations

import torch

from gsv.backends.base import AudioBackend, GPTBackend


class _EagerModel:
    """An eager model in eval mode on one device; ``_loader`` names the Bundle method that loads it."""

    name = "torch"
    _loader = ""

    def __init__(self, model, device="cpu"):
        self.model = model.eval()
        self.config = model.cfg
        self.device = torch.device(device)

    @classmethod
    def from_bundle(cls, bundle, device="cpu"):
        return cls(getattr(bundle, cls._loader)(device), device)


class TorchGPTBackend(_EagerModel, GPTBackend):
    _loader = "load_gpt"

    @torch.inference_mode()
    def prefill(self, phones, phone_lens, bert, prompt, prompt_lens):
        d = self.device
        return self.model.prefill(phones.to(d), phone_lens.to(d), bert.to(d), prompt.to(d), prompt_lens.to(d))

    @torch.inference_mode()
    def decode_step(self, tokens, positions, k_cache, v_cache, kv_lens):
        d = self.device
        return self.model.decode_step(tokens.to(d), positions.to(d), k_cache, v_cache, kv_lens.to(d))


class TorchAudioBackend(_EagerModel, AudioBackend):
    _loader = "load_sovits"
    trims_vocoder = True

    @torch.inference_mode()
    def decode_audio(self, codes, code_lens, phones, phone_lens, ge, noise=None, speed: float = 1.0,
                     vocode_from=None, keep=None) -> torch.Tensor:
        d = self.device
        z, mask = self.model.decode_latent(codes.to(d), phones.to(d), ge.to(d), None if noise is None else noise.to(d),
                                           code_lens.to(d), phone_lens.to(d), speed)
        frames = mask.sum(dim=(1, 2)).long()
        rows = self._vocoder_rows(z, frames, vocode_from, keep)
        # a lone row needs no masks (upstream's arithmetic exactly)
        masks = (rows.valid_to.to(d), rows.valid_from.to(d)) if codes.shape[0] > 1 else (None, None)
        audio = self.model.vocode(rows.z, ge.to(d), *masks, trim=rows.trim if rows.trimmed else None)
        return rows.place(audio, self.config.hop_length)
