"""``gsv-train sovits``: SoVITS fine-tuning as upstream ``s2_train.py`` does it.

One step (upstream order): the generator encodes the whole utterance (reference encoder on the
same utterance's spectrogram -> ge; frozen ``ssl_proj`` + quantizer -> codes -> codebook vectors
x2 -> text encoder prior; posterior encoder on the spectrogram -> z -> flow -> z_p), decodes a
random 32-frame slice of z to audio; the discriminator is updated on (real slice, detached fake)
with LSGAN; then the generator on LSGAN + feature matching + 45 x mel-L1 + KL.  AdamW for both,
the text embedding/text encoder/MRTE at 0.4 x lr, ExponentialLR per epoch, fp16 autocast with a
GradScaler on CUDA.  Weight norm is applied to upstream's weight-normed modules for training and
folded when saving.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gsv.audio import spec_to_mel, spectrogram
from gsv.models.sovits.flow import sequence_mask
from trainer import losses
from trainer.data import ExperimentError
from trainer.loop import Progress, Stage
from trainer.precision import resolve_precision

log = logging.getLogger(__name__)


def slice_segments(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """x [B, C, T], starts [B] -> x[b, :, starts[b] : starts[b] + size] as [B, C, size]."""
    out = torch.zeros_like(x[:, :, :size])
    for i in range(x.shape[0]):
        s = int(starts[i])
        out[i] = x[i, :, s : s + size]
    return out


def rand_slice_segments(x: torch.Tensor, lengths: torch.Tensor, size: int):
    """Uniform random start per row in [0, length - size] (upstream: CPU ``torch.rand``)."""
    ids = (torch.rand([x.shape[0]]).to(x.device) * (lengths - size + 1)).to(torch.long)
    return slice_segments(x, ids, size), ids


class SoVITSForTraining(nn.Module):
    """Upstream ``SynthesizerTrn.forward`` around our inference :class:`~gsv.models.sovits.model.SoVITS`."""

    def __init__(self, net, segment_frames: int):
        super().__init__()
        self.net = net
        self.segment_frames = segment_frames

    def forward(self, ssl, spec, spec_lengths, phones, phone_lengths, sv=None, vocoder_frames: int | None = None,
                prior_only: bool = False):
        """ssl [B, 768, L], spec [B, 1025, L] (L even), lengths [B], and for Pro models the utterances'
        speaker-verification embeddings sv [B, sv_dim] -> y_hat [B, 1, seg * hop], slice starts [B],
        mask [B, 1, L] and the KL terms (z_p, m_p, logs_p, logs_q), each [B, C, L].
        ``vocoder_frames``: the vocoder phase (:meth:`posterior_and_decoder`); ``prior_only``: the prior
        phase, only the KL terms (z_p, logs_q, m_p, logs_p, mask), the posterior and speaker embedding
        frozen, no decoder.
        (Both through forward, so that DDP synchronises the gradients.)"""
        if vocoder_frames is not None:
            return self.posterior_and_decoder(spec, spec_lengths, vocoder_frames, sv)
        net = self.net
        posterior_grad = torch.is_grad_enabled() and not prior_only
        with torch.set_grad_enabled(posterior_grad):
            # the same utterance is its own reference (Pro: ge = PReLU(ref_enc + sv_emb(sv)), as upstream)
            ge = net.speaker_embedding(spec, sv, spec_lengths)
        with torch.no_grad(), torch.autocast(spec.device.type, enabled=False):
            # frozen (eval, no gradient): upstream's quantizer in eval returns plain codebook vectors
            codes = net.quantizer.encode(net.ssl_proj(ssl.float()))  # [1, B, L/2]
            quantized = net.quantizer.decode(codes)
        if net.frames_per_code != 1:
            quantized = F.interpolate(quantized, size=quantized.shape[-1] * net.frames_per_code, mode="nearest")
        _, m_p, logs_p, y_mask = net.enc_p(quantized, spec_lengths, phones, phone_lengths, net.text_condition(ge))
        with torch.set_grad_enabled(posterior_grad):
            z, m_q, logs_q, y_mask = net.enc_q(spec, spec_lengths, g=ge)
        z_p = net.flow(z, y_mask, g=ge)
        if prior_only:
            return z_p, logs_q, m_p, logs_p, y_mask
        z_slice, ids = rand_slice_segments(z, spec_lengths, self.segment_frames)
        y_hat = net.dec(z_slice, g=ge)
        return y_hat, ids, y_mask, (z_p, m_p, logs_p, logs_q)

    def posterior_and_decoder(self, spec, spec_lengths, segment_frames: int, sv=None):
        """The vocoder phase's path: spectrogram -> posterior encoder -> decoder, nothing else.
        -> y_hat [B, 1, seg * hop], slice starts [B], seg, and the KL terms of the posterior against a
        unit Gaussian (z, logs_q, 0, 0, mask).  seg = min(segment_frames, shortest row): rows differ."""
        net = self.net
        ge = net.speaker_embedding(spec, sv, spec_lengths)
        z, m_q, logs_q, y_mask = net.enc_q(spec, spec_lengths, g=ge)
        seg = int(min(segment_frames, int(spec_lengths.min())))
        z_slice, ids = rand_slice_segments(z, spec_lengths, seg)
        zeros = torch.zeros_like(z)
        return net.dec(z_slice, g=ge), ids, seg, (z, logs_q, zeros, zeros, y_mask)


class SoVITSStage(Stage):
    name = "sovits"
    metric = "val/loss"

    def __init__(self, cfg, exp, base, train_items: list, dist, device: torch.device, hints: dict | None = None):
        from gsv.checkpoint.upstream import weight_norm_module_names
        from gsv.models.weightnorm import apply_weight_norm
        from trainer.data import SoVITSDataset, collate_sovits, replicate
        from trainer.discriminator import build_discriminator, load_upstream_discriminator

        hints = hints or {}
        self.cfg, self.exp, self.base, self.dist, self.device = cfg, exp, base, dist, device
        self.arch = base.sovits_config
        self.segment_frames = int(cfg.segment_frames or hints.get("segment_frames") or
                                  self.arch.segment_size // self.arch.hop_length)
        net = base.load_sovits(with_posterior=True)  # fresh enc_q when the base has none (as upstream)
        apply_weight_norm(net, weight_norm_module_names(net.state_dict().keys()))
        for m in (net.ssl_proj, net.quantizer):
            m.requires_grad_(False)
        self.g = SoVITSForTraining(net, self.segment_frames).to(device).train()
        net.ssl_proj.eval()
        net.quantizer.eval()
        dcfg = cfg.discriminator
        if dcfg.channel_divisor == 1 and hints.get("disc_channel_divisor"):
            from trainer.config import DiscriminatorConfig

            dcfg = DiscriminatorConfig(dcfg.periods, int(hints["disc_channel_divisor"]))
        dcfg = dcfg.for_model(self.arch.is_pro)
        self.d_cfg = dcfg
        self.d = (load_upstream_discriminator(cfg.base_discriminator, dcfg) if cfg.base_discriminator
                  else build_discriminator(dcfg)).to(device).train()
        low = {id(p) for mod in (net.enc_p.text_embedding, net.enc_p.encoder_text, net.enc_p.mrte) for p in mod.parameters()}
        base_params = [p for p in net.parameters() if p.requires_grad and id(p) not in low]
        low_lr = cfg.learning_rate * cfg.text_low_lr_rate
        groups = [{"params": base_params, "lr": cfg.learning_rate}] + [
            {"params": list(mod.parameters()), "lr": low_lr}
            for mod in (net.enc_p.text_embedding, net.enc_p.encoder_text, net.enc_p.mrte)]
        kw = dict(betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
        self.opt_g = torch.optim.AdamW(groups, cfg.learning_rate, **kw)
        self.opt_d = torch.optim.AdamW(self.d.parameters(), cfg.learning_rate, **kw)
        self.group_lr = [g["lr"] for g in self.opt_g.param_groups]
        self.precision = resolve_precision(device, cfg.fp16, cfg.cpu_precision, cuda_bf16=False)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision.needs_grad_scaler)
        self.g_ddp, self.d_ddp = self.g, self.d
        if dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            # the vocoder and prior phases leave parts of the model without gradients
            self.g_ddp = DDP(self.g, device_ids=ids, find_unused_parameters=cfg.vocoder_steps + cfg.prior_steps > 0)
            self.d_ddp = DDP(self.d, device_ids=ids)
        self.dataset = SoVITSDataset(exp, replicate(train_items, cfg.min_epoch_items), self.segment_frames)
        self.collate = collate_sovits
        self._synth = None

    # ------------------------------------------------------------------ loop interface
    def modules(self):
        return {"g": self.g.net, "d": self.d}

    def optimizers(self):
        return {"g": self.opt_g, "d": self.opt_d}

    def extra_state(self):
        return {"scaler": self.scaler.state_dict(), "discriminator": self.d_cfg.to_dict(),
                "segment_frames": self.segment_frames, "base_id": self.base.bundle_id}

    def load_extra_state(self, state):
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def make_val_dataset(self, items):
        from trainer.data import SoVITSDataset

        return SoVITSDataset(self.exp, items, self.segment_frames)

    def on_epoch_start(self, epoch: int) -> None:
        from trainer.optim import sovits_lr

        for group, base_lr in zip(self.opt_g.param_groups, self.group_lr):
            group["lr"] = sovits_lr(base_lr, self.cfg.lr_decay, epoch)
        for group in self.opt_d.param_groups:
            group["lr"] = sovits_lr(self.cfg.learning_rate, self.cfg.lr_decay, epoch)

    def _autocast(self):
        return self.precision.autocast()

    def _batch(self, batch):
        """The collated batch on the device; a Pro base needs the utterances' speaker-verification embeddings."""
        ssl, spec, spec_lengths, wav, _, phones, phone_lengths, sv = (
            t.to(self.device) if t is not None else None for t in batch)
        if self.arch.is_pro and sv is None:
            raise ExperimentError("this base is a Pro model but the experiment has no speaker-verification "
                                  "embeddings: rerun 'gsv-train prepare' with this base")
        return ssl, spec, spec_lengths, wav, phones, phone_lengths, sv if self.arch.is_pro else None

    def _sliced_targets(self, spec, wav, ids, seg: int, y_hat):
        """The real audio and log-mels of the slices the decoder rendered, and the log-mels of y_hat
        -> (y, y_mel, y_hat_mel); log-mels in fp32 outside autocast (upstream computes them inside;
        stft has no fp16 path on CPU)."""
        a = self.arch
        y_mel = slice_segments(spec_to_mel(spec, a.sampling_rate, a.n_mel_channels), ids, seg)
        y_hat_spec = spectrogram(y_hat.squeeze(1).float(), a.filter_length, a.hop_length, a.win_length)
        y_hat_mel = spec_to_mel(y_hat_spec, a.sampling_rate, a.n_mel_channels)
        y = slice_segments(wav, ids * a.hop_length, seg * a.hop_length)
        return y, y_mel, y_hat_mel

    def _forward(self, batch, g):
        ssl, spec, spec_lengths, wav, phones, phone_lengths, sv = self._batch(batch)
        with self._autocast():
            y_hat, ids, z_mask, (z_p, m_p, logs_p, logs_q) = g(ssl, spec, spec_lengths, phones, phone_lengths, sv)
        y, y_mel, y_hat_mel = self._sliced_targets(spec, wav, ids, self.segment_frames, y_hat)
        return y, y_hat, y_mel, y_hat_mel, (z_p, logs_q, m_p, logs_p, z_mask)

    def vocoder_step(self, batch) -> dict[str, float]:
        """A vocoder-phase step (bases trained from scratch): only the speaker encoder, posterior
        encoder and decoder, on slices of ``vocoder_segment_frames``, mel loss + the posterior's KL to
        a unit Gaussian, weighted ``vocoder_c_kl`` (keeps its scale bounded until the prior joins; at
        the full KL weight the posterior collapses towards that Gaussian -- measured: std 0.89 against
        a mean spread of 0.40 -- and the decoder learns to ignore z).  A random decoder learns to
        render spectra from the data it sees; this step skips the text encoder, flow and discriminator,
        so the same seconds show the decoder several times more audio than a full step."""
        ssl, spec, spec_lengths, wav, phones, phone_lengths, sv = self._batch(batch)
        with self._autocast():
            y_hat, ids, seg, kl_terms = self.g_ddp(ssl, spec, spec_lengths, phones, phone_lengths, sv,
                                                   vocoder_frames=self.cfg.vocoder_segment_frames)
        y, y_mel, y_hat_mel = self._sliced_targets(spec, wav, ids, seg, y_hat)
        return self._step_generator(self._reconstruction_terms(y, y_hat, y_mel, y_hat_mel, kl_terms,
                                                               self.cfg.vocoder_c_kl))

    def prior_step(self, batch) -> dict[str, float]:
        """A prior-phase step (after the vocoder phase): the text encoder and flow learn to meet the
        posterior the vocoder phase trained (KL loss only); the posterior, speaker encoder and decoder
        stay as they are, so the prior cannot pull the decoder's latent away from what it renders, and
        the step skips the decoder entirely (a fraction of a full step's time)."""
        ssl, spec, spec_lengths, _, phones, phone_lengths, sv = self._batch(batch)
        with self._autocast():
            kl_terms = self.g_ddp(ssl, spec, spec_lengths, phones, phone_lengths, sv, prior_only=True)
        return self._step_generator({"kl": losses.kl_loss(*kl_terms) * self.cfg.c_kl})

    def warmup_step(self, batch) -> dict[str, float]:
        """A warm-up step (bases trained from scratch): the generator on the mel + KL losses only,
        no discriminator (about 60% of a full step's time); a random decoder first has to learn to
        make speech-like spectra at all, which the adversarial game only slows down."""
        y, y_hat, y_mel, y_hat_mel, kl_terms = self._forward(batch, self.g_ddp)
        return self._step_generator(self._reconstruction_terms(y, y_hat, y_mel, y_hat_mel, kl_terms, self.cfg.c_kl))

    def _reconstruction_terms(self, y, y_hat, y_mel, y_hat_mel, kl_terms, c_kl: float) -> dict[str, torch.Tensor]:
        """The losses of the steps without discriminator: mel, KL (weight ``c_kl``) and the DC offset."""
        return {"mel": F.l1_loss(y_mel, y_hat_mel) * self.cfg.c_mel, "kl": losses.kl_loss(*kl_terms) * c_kl,
                "dc": losses.dc_offset_loss(y_hat, y) * self.cfg.c_mel}

    def _step_generator(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """One generator update on the sum of ``terms``; returns the logged scalars.  Parameters outside
        the step's path keep no gradient (set to None), which AdamW skips."""
        loss_g = sum(terms.values())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.unscale_(self.opt_g)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        out = {"loss/g/total": loss_g, **{f"loss/g/{k}": v for k, v in terms.items()}}
        return {k: v.detach().item() for k, v in out.items()} | {"learning_rate": self.opt_g.param_groups[0]["lr"]}

    def patience_start_step(self) -> int:
        # the vocoder and prior phases leave the path the validation synthesis takes half-trained
        return self.cfg.vocoder_steps + self.cfg.prior_steps

    def train_step(self, micro_batches, step: int) -> dict[str, float]:
        (batch,) = micro_batches
        cfg = self.cfg
        if step < cfg.vocoder_steps:
            return self.vocoder_step(batch)
        if step < cfg.vocoder_steps + cfg.prior_steps:
            return self.prior_step(batch)
        if step < cfg.vocoder_steps + cfg.prior_steps + cfg.warmup_steps:
            return self.warmup_step(batch)
        y, y_hat, y_mel, y_hat_mel, kl_terms = self._forward(batch, self.g_ddp)
        with self._autocast():
            d_real, d_fake, _, _ = self.d_ddp(y, y_hat.detach())
        loss_disc = losses.discriminator_loss(d_real, d_fake)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_disc).backward()
        self.scaler.unscale_(self.opt_d)
        self.scaler.step(self.opt_d)
        with self._autocast():
            _, d_fake, fmap_real, fmap_fake = self.d_ddp(y, y_hat)
        loss_mel = F.l1_loss(y_mel, y_hat_mel) * self.cfg.c_mel
        loss_kl = losses.kl_loss(*kl_terms) * self.cfg.c_kl
        loss_fm = losses.feature_loss(fmap_real, fmap_fake)
        loss_gen = losses.generator_loss(d_fake)
        loss_g = loss_gen + loss_fm + loss_mel + loss_kl  # + kl_ssl, which is 0 with a frozen quantizer
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.unscale_(self.opt_g)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        out = {"loss/g/total": loss_g, "loss/d/total": loss_disc, "loss/g/mel": loss_mel, "loss/g/kl": loss_kl,
               "loss/g/fm": loss_fm, "loss/g/gen": loss_gen}
        return {k: v.detach().item() for k, v in out.items()} | {"learning_rate": self.opt_g.param_groups[0]["lr"]}

    @torch.no_grad()
    def validate(self, batches) -> dict[str, float]:
        """Reconstruction losses on held-out items (eval mode, fixed random slices)."""
        self.g.eval()
        mel = kl = 0.0
        for batch in batches:
            _, _, y_mel, y_hat_mel, kl_terms = self._forward(batch, self.g)
            mel += float(F.l1_loss(y_mel, y_hat_mel))
            kl += float(losses.kl_loss(*kl_terms))
        self.g.train()
        self.g.net.ssl_proj.eval()
        self.g.net.quantizer.eval()
        n = max(1, len(batches))
        return {"val/mel": mel / n, "val/kl": kl / n, "val/loss": self.cfg.c_mel * mel / n + self.cfg.c_kl * kl / n}

    # ------------------------------------------------------------------ weights
    def release_state_dict(self) -> dict[str, torch.Tensor]:
        """The generator with weight norm folded (what upstream's release files hold)."""
        from gsv.models.weightnorm import folded_state_dict

        return folded_state_dict(self.g.net)

    def inference_model(self):
        from gsv.models.sovits.model import SoVITS

        m = SoVITS(self.arch)
        m.load_state_dict({k: v for k, v in self.release_state_dict().items() if not k.startswith("enc_q.")})
        return m.eval()

    def write_release(self, kind: str, sd: dict[str, torch.Tensor], epoch: int, step: int, name: str) -> None:
        from trainer.checkpointing import write_sovits_release

        file = f"sovits-{kind}.pth" if kind in ("best", "last") else f"{name}_e{epoch}_s{step}.pth"
        write_sovits_release(self.exp.weights_dir / file, self.arch, sd, epoch, step, self.cfg, name)

    def synthesize(self, progress: Progress, writer) -> dict[str, float]:
        from trainer.validate import log_sample

        if self._synth is None:
            return {}
        gpt = load_stage_gpt(self.exp, self.base)
        audio, metrics = self._synth.run(gpt, self.inference_model())
        log_sample(writer, self.exp.logs_dir(self.name) / "samples", "sovits", audio, progress.global_step)
        return metrics

    def attach_synth(self, synth) -> None:
        self._synth = synth


def load_stage_gpt(exp, base):
    """The GPT for synthesis during SoVITS training: the experiment's best GPT if trained, else the base."""
    from trainer.checkpointing import load_weights

    gpt = base.load_gpt()
    best = exp.stage_dir("gpt") / "best.safetensors"
    if Path(best).is_file():
        gpt.load_state_dict(load_weights(best))
    return gpt.eval()


def load_stage_sovits(exp, base):
    """The SoVITS for synthesis during GPT training: the experiment's best SoVITS if trained, else the base."""
    from trainer.checkpointing import load_weights

    sovits = base.load_sovits()
    best = exp.stage_dir("sovits") / "best.safetensors"
    if Path(best).is_file():
        sovits.load_state_dict({k: v for k, v in load_weights(best).items() if not k.startswith("enc_q.")})
    return sovits.eval()
