"""Training configurations (dataclasses).  Architecture stays in :mod:`gsv.models.config`.

Defaults are upstream's (``configs/s2.json``, ``configs/s1longer-v2.yaml`` and the web UI), so a
run without options fine-tunes the way upstream does; each field says where its default comes from.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# CPU training precisions: auto = bf16 autocast where the CPU multiplies bf16 natively, fp32 elsewhere
CPU_PRECISIONS = ("auto", "fp32", "bf16")


V2_PERIODS = (2, 3, 5, 7, 11)
PRO_PERIODS = (2, 3, 5, 7, 11, 17, 23)  # upstream's MultiPeriodDiscriminator for v2Pro/v2ProPlus


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Multi-period discriminator (upstream ``MultiPeriodDiscriminator``; v2 periods, Pro models add 17 and 23)."""

    periods: tuple[int, ...] = V2_PERIODS
    # every hidden channel count (and conv group count) of upstream's discriminators divided by
    # this; 1 = upstream's sizes (and can load s2D*.pth), larger = cheap discriminators for tiny runs
    channel_divisor: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiscriminatorConfig":
        return cls(periods=tuple(d.get("periods", V2_PERIODS)), channel_divisor=int(d.get("channel_divisor", 1)))

    def for_model(self, is_pro: bool) -> "DiscriminatorConfig":
        """Upstream's periods for the model version (the default v2 set becomes the Pro set)."""
        if is_pro and self.periods == V2_PERIODS:
            return DiscriminatorConfig(PRO_PERIODS, self.channel_divisor)
        return self


@dataclass
class CommonTrainConfig:
    """What both stages share: the loop, validation, checkpoints and logging."""

    epochs: int = 8
    max_steps: int | None = None  # stop after this many optimizer steps in total (also across resumes)
    max_minutes: float | None = None  # stop after this many minutes of training in this invocation
    batch_size: int = 8
    seed: int = 1234  # upstream train.seed
    val_fraction: float = 0.1  # share of items (by a stable hash of the name) held out; 0 = none
    patience: int = 5  # early stopping: validations without improvement before stopping; 0 = off
    early_stop_on: str = "loss"  # loss: the stage's val/loss (lower is better) | similarity: val/speaker_similarity
    save_every_steps: int = 0  # also write the resumable state every N steps (0 = at epoch ends only)
    save_every_epoch: int = 0  # also write upstream-named release files every N epochs (0 = only best/last)
    log_every: int = 10  # steps between TensorBoard/console training scalars
    num_workers: int = 0  # DataLoader workers (features are precomputed: 0 is usually fastest)
    fp16: bool = True  # mixed precision when on CUDA (ignored on CPU)
    cpu_precision: str = "auto"  # one of CPU_PRECISIONS (trainer.precision resolves it)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = True  # continue from EXP/train/<stage>/state-last.pt when present
    min_epoch_items: int = 100  # upstream replicates datasets smaller than this many items per epoch
    # validation synthesis: a fixed sentence spoken with a held-out (or training) reference
    synth: bool = True
    synth_text: str | list[str] = "This is a short test of the new voice."  # or several (similarity: their mean)
    synth_lang: str = "en"
    synth_max_tokens: int = 250  # 10 s at 25 tokens/s
    speaker_model: str | None = None  # local speechbrain spkrec-ecapa-voxceleb folder; None = Resemblyzer's GE2E
    name: str = ""  # release file name prefix (default: the EXP folder name)
    threads: int | None = None  # torch CPU threads (None: the base's hint, e.g. 1 for tiny models, else torch's default)


@dataclass
class SoVITSTrainConfig(CommonTrainConfig):
    """SoVITS fine-tuning (upstream ``s2_train.py`` with ``configs/s2.json``)."""

    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.8, 0.99)
    eps: float = 1e-9
    weight_decay: float = 0.01  # torch AdamW's default, which upstream does not override
    lr_decay: float = 0.999875  # ExponentialLR per epoch; epoch e (from 1) runs at lr * decay**e as upstream
    text_low_lr_rate: float = 0.4  # lr factor of enc_p.text_embedding, enc_p.encoder_text, enc_p.mrte
    c_mel: float = 45.0
    c_kl: float = 1.0
    segment_frames: int | None = None  # random slice length in latent frames (None: architecture's 32)
    # not upstream: the first N steps train the generator on mel + KL only, without the discriminator, for
    # bases trained from scratch, whose decoder cannot make speech yet (upstream's pretrained one can)
    warmup_steps: int = 0
    # not upstream: before those, N steps of the vocoder phase (speaker encoder + posterior encoder +
    # decoder on longer slices, mel + KL to a unit Gaussian): the cheapest way to teach a random decoder
    vocoder_steps: int = 0
    vocoder_segment_frames: int = 64
    vocoder_c_kl: float = 0.1  # a unit Gaussian is no prior of speech: only a weak pull that bounds z
    # then N steps of the prior phase: the text encoder and flow learn to meet that posterior (KL only),
    # the decoder and posterior frozen; the warm-up and full steps follow
    prior_steps: int = 0
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    base_discriminator: str | None = None  # upstream s2D*.pth to start the discriminator from

    @property
    def stage(self) -> str:
        return "sovits"


@dataclass
class GPTTrainConfig(CommonTrainConfig):
    """GPT fine-tuning (upstream ``s1_train.py`` with ``s1longer-v2.yaml``; see trainer.optim)."""

    epochs: int = 15  # web UI default
    lr: float = 0.002  # the rate upstream's scheduler pins every step after the first to
    first_step_lr: float | None = 0.01  # upstream's first update runs at ScaledAdam's constructor lr
    betas: tuple[float, float] = (0.9, 0.95)
    clipping_scale: float = 2.0
    clipping_update_period: int = 1000
    grad_accum: int = 4  # micro-batches per optimizer update (upstream steps every 4th batch)
    dpo: bool = False  # upstream train.if_dpo: reference-free DPO against corrupted token sequences
    dpo_beta: float = 0.2
    prompt_pairs: float = 0.0  # share of items trained behind another utterance of their speaker (see GPTDataset)
    max_sec: int = 54  # data filters as upstream's Text2SemanticDataset
    min_ps_ratio: float = 3.0
    max_ps_ratio: float = 25.0

    @property
    def stage(self) -> str:
        return "gpt"


def config_to_dict(cfg) -> dict[str, Any]:
    return asdict(cfg)


def config_from_dict(cls, d: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    if "discriminator" in kw and isinstance(kw["discriminator"], dict):
        kw["discriminator"] = DiscriminatorConfig.from_dict(kw["discriminator"])
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    return cls(**kw)
