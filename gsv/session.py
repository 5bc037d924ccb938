"""Per-request state: options, the request's segments, sampling/noise generators, chunk assemblers.

Everything request-specific lives in a :class:`Session` owned by the request; the engine and the
backends are shared and stateless with respect to requests.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from gsv import constants as C
from gsv.errors import OptionError
from gsv.sampling import RowSampler, SamplingOptions, make_generator
from gsv.streaming import LATENCY_POLICIES, ChunkPolicy, SegmentAssembler, Window

SPEED_RANGE = (0.5, 2.0)  # speaking rates accepted (the decoder stretches its latent frames by 1 / speed)
WHOLE_SEGMENT = ChunkPolicy(first_chunk_tokens=10**6, chunk_tokens=10**6, max_chunk_tokens=10**6, lookahead_tokens=0,
                            max_relaxed_chunk_tokens=10**6)


@dataclass(frozen=True)
class SynthesisOptions:
    """Per-request options (validated once, at construction)."""

    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    speed: float = 1.0
    noise_scale: float = 0.5  # upstream's z_p noise (TTS never changes it)
    fragment_interval: float = 0.3  # seconds of silence between text segments (upstream default)
    max_audio_seconds: float | None = None
    streaming: bool = True  # False: each segment decoded whole (upstream's quality), one chunk per segment
    latency_mode: str = "balanced"  # lowest | balanced | quality

    def __post_init__(self):
        for name in ("speed", "noise_scale", "fragment_interval"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise OptionError(f"{name} must be a finite number, got {v!r}")
        if not SPEED_RANGE[0] <= self.speed <= SPEED_RANGE[1]:
            raise OptionError(f"speed must be in [{SPEED_RANGE[0]}, {SPEED_RANGE[1]}], got {self.speed}")
        if not 0.0 <= self.noise_scale <= 2.0:
            raise OptionError(f"noise_scale must be in [0, 2], got {self.noise_scale}")
        if not 0.0 <= self.fragment_interval <= 5.0:
            raise OptionError(f"fragment_interval must be in [0, 5] seconds, got {self.fragment_interval}")
        if self.max_audio_seconds is not None and (
            not isinstance(self.max_audio_seconds, (int, float)) or not math.isfinite(self.max_audio_seconds)
            or self.max_audio_seconds <= 0
        ):
            raise OptionError(f"max_audio_seconds must be a positive number, got {self.max_audio_seconds!r}")
        if self.latency_mode not in LATENCY_POLICIES:
            raise OptionError(f"latency_mode must be one of {', '.join(LATENCY_POLICIES)}, got {self.latency_mode!r}")

    @property
    def chunk_policy(self) -> ChunkPolicy:
        return LATENCY_POLICIES[self.latency_mode] if self.streaming else WHOLE_SEGMENT


@dataclass
class TextSegment:
    """One text segment ready for the GPT: target phone ids and their BERT features [bert_dim, n]."""

    text: str
    phones: list[int]
    bert: torch.Tensor


@dataclass
class AudioChunk:
    samples: np.ndarray  # float32 mono at the model rate
    sequence: int
    start_sample: int
    segment: int
    final: bool = False


@dataclass
class DecodeJob:
    session: "Session"
    segment: int
    window: Window
    codes: torch.Tensor  # [w1 - w0]
    noise: torch.Tensor | None  # [C, frames]
    created: float
    first: bool
    deadline: float  # when the listener would run out of audio (for ordering)
    keep: tuple[int, int] | None = None  # tokens from the vocoded start whose audio is used (None: all)
    work: float = 0.0  # vocoder work in untrimmed tokens (Engine.work_tokens): the decode-cost unit


class Session:
    """One synthesis request: its voice, segments, options and all progress."""

    def __init__(self, request_id: str, voice, segments: list[TextSegment], options: SynthesisOptions,
                 sink: Callable[[AudioChunk], None] | None = None, deadline: float | None = None,
                 input_open: bool = False, on_finish: Callable[["Session"], None] | None = None):
        if not segments and not input_open:
            raise OptionError("nothing to synthesize")
        self.request_id = request_id
        self.voice = voice
        self.segments = segments
        self.options = options
        self.seed = options.sampling.resolved_seed()
        self.sample_gen = make_generator(self.seed)
        self.noise_gen = make_generator((self.seed * 7919 + 1) % (2**63 - 1))
        self.sink = sink
        self.deadline = deadline
        self.cancel_event = threading.Event()
        self.lock = threading.Lock()  # guards emission order between the AR and decoder threads
        # progress
        self.seg_index = 0
        self.input_open = input_open  # more segments may still be appended (bidirectional streaming)
        self.parked = False  # waiting for more input with no GPT row
        self.sampler: RowSampler | None = None
        self.assemblers: dict[int, SegmentAssembler] = {}  # per segment: decode jobs may lag the AR loop
        self.seg_finished = False
        self.noise: list[torch.Tensor] = []  # per token [C, 2] blocks of the current segment
        self.audio_pos = 0
        self.total_tokens = 0
        # max_audio_seconds caps everything the listener hears: tokens (1 / (25 * speed) s each) and
        # the pauses between segments (one before every segment after the first)
        self.max_samples = int(options.max_audio_seconds * C.SAMPLE_RATE) if options.max_audio_seconds else None
        # decode jobs: scheduled only by the AR thread, decoded only by the decoder thread (one writer each)
        self.jobs_scheduled = 0
        self.jobs_decoded = 0
        self.sequence = 0
        self.samples_out = 0
        self.samples_decoded = 0  # vocoder output of this request's windows (context included): its decoder cost
        self.done = threading.Event()
        self.on_finish = on_finish  # called once, from whichever thread finishes the request
        self.finish_reason = ""
        self.error: BaseException | None = None
        # timings (time.monotonic())
        self.t_created = time.monotonic()
        self.t_admitted: float | None = None
        self.t_started: float | None = None  # first GPT prefill
        self.t_first_audio: float | None = None
        self.t_finished: float | None = None
        self.underruns = 0

    # ------------------------------------------------------------------ segment lifecycle
    @property
    def assembler(self) -> SegmentAssembler:
        return self.assemblers[self.seg_index]

    @property
    def segment(self) -> TextSegment:
        return self.segments[self.seg_index]

    @property
    def inflight(self) -> int:
        """Decode jobs scheduled and not yet emitted."""
        return self.jobs_scheduled - self.jobs_decoded

    def start_segment(self, vocab_size: int, eos: int) -> None:
        opts = self.options.sampling
        left = self.tokens_left()
        if left is not None:
            opts = dataclasses.replace(opts, seed=self.seed, max_tokens=max(1, min(opts.max_tokens, left)))
        self.sampler = RowSampler.start(opts, self.sample_gen, self.voice.prompt_tokens, vocab_size, eos)
        self.assemblers[self.seg_index] = SegmentAssembler(self.options.chunk_policy)
        self.seg_finished = False
        self.noise = []
        self.audio_pos = int(self.voice.prompt_tokens.numel())

    def gpt_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(phones [Tx], bert [D, Tx], prompt tokens [Ty]) of the current segment: prompt text + segment text."""
        v, s = self.voice, self.segment
        phones = torch.tensor(list(v.prompt_phones) + list(s.phones), dtype=torch.long)
        bert = torch.cat([v.prompt_bert, s.bert], dim=1)
        return phones, bert, v.prompt_tokens

    def prefill_positions(self) -> int:
        """Length of the current segment's prefill: prompt phones + segment phones + prompt tokens."""
        v = self.voice
        return len(v.prompt_phones) + len(self.segment.phones) + int(v.prompt_tokens.numel())

    def push_token(self, token: int, noise_channels: int) -> None:
        self.total_tokens += 1
        self.audio_pos += 1
        if self.options.noise_scale and self.options.speed == 1.0:
            self.noise.append(torch.randn(noise_channels, 2, generator=self.noise_gen) * self.options.noise_scale)

    def window_noise(self, window: Window, frames: int, noise_channels: int) -> torch.Tensor | None:
        if not self.options.noise_scale:
            return None
        if self.options.speed == 1.0:
            return torch.cat(self.noise[window.w0 : window.w1], dim=1)  # the same noise per frame in every window
        return torch.randn(noise_channels, frames, generator=self.noise_gen) * self.options.noise_scale

    def tokens_left(self, pauses: int = 0) -> int | None:
        """Tokens that still fit in max_audio_seconds after the audio committed so far and ``pauses``
        more pauses between segments (None: no cap)."""
        if self.options.max_audio_seconds is None:
            return None
        o = self.options
        per_token = 1.0 / (C.TOKENS_PER_SECOND * o.speed)
        used = self.total_tokens * per_token + (self.seg_index + pauses) * o.fragment_interval
        return math.floor((o.max_audio_seconds - used) / per_token + 1e-6)

    def budget_left(self, pauses: int = 0) -> bool:
        left = self.tokens_left(pauses)
        return left is None or left >= 1

    def more_segments(self) -> bool:
        """Another segment is ready to start after the current one (and still fits, pause included)."""
        return self.seg_index + 1 < len(self.segments) and self.budget_left(pauses=1)

    def may_get_more(self) -> bool:
        """More segments may still arrive (open input and room for a pause and a token)."""
        return self.input_open and self.budget_left(pauses=1)

    def end_reason(self) -> str:
        """Why a request that ran to its end stopped: "max_audio" when the cap cut it short."""
        cut = self.seg_index + 1 < len(self.segments) or (self.sampler is not None and self.sampler.finish_reason ==
                                                          "max_tokens" and not self.budget_left())
        return "max_audio" if self.options.max_audio_seconds is not None and cut else "completed"

    # ------------------------------------------------------------------ state
    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self) -> None:
        self.cancel_event.set()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    def playback_deadline(self) -> float:
        """When a listener who started at first audio runs out of the audio sent so far."""
        if self.t_first_audio is None:
            return self.t_created
        return self.t_first_audio + self.samples_out / C.SAMPLE_RATE

    def emit(self, samples: np.ndarray, segment: int, final: bool = False) -> AudioChunk | None:
        if self.max_samples is not None and self.samples_out + samples.size > self.max_samples:
            # the token budget keeps this to rounding (a frame at speed != 1); never exceed the cap
            samples = samples[: max(self.max_samples - self.samples_out, 0)]
        if samples.size == 0 and not final:
            return None
        chunk = AudioChunk(samples, self.sequence, self.samples_out, segment, final)
        now = time.monotonic()
        if self.t_first_audio is None and samples.size:
            self.t_first_audio = now
        elif samples.size and now > self.playback_deadline():
            self.underruns += 1
        self.sequence += 1
        self.samples_out += samples.size
        if self.sink is not None:
            self.sink(chunk)
        return chunk

    def finish(self, reason: str, error: BaseException | None = None) -> None:
        if self.done.is_set():
            return
        self.finish_reason = reason
        self.error = error
        self.t_finished = time.monotonic()
        self.done.set()
        if self.on_finish is not None:
            self.on_finish(self)
