"""Turning a growing sequence of semantic tokens into seamless audio chunks.

A text segment's tokens arrive one per GPT step.  :class:`SegmentAssembler` decides when a chunk is
ready (a small first chunk for latency, larger ones after), which token window to decode (left
context + new tokens + lookahead, so the decoder sees both sides of every emitted sample) and how
to join chunks: each chunk's last ``crossfade`` samples are held back and cross-faded with the
next window's rendering of the same samples.  Every sample of the segment is emitted exactly once,
so the streamed audio has exactly the length of a whole-segment decode.

Two context widths, because the two SoVITS stages differ in cost and reach (``gsv-bench
receptive-field``, full-size weights): the decoder (text encoder + flow) is ~5% of the cost and its
self-attention reaches the whole window, so it gets a wide left context; the vocoder is ~95% of the
cost and its convolutions reach only ~5 tokens (-60 dB at 5, exactly 0 beyond 7), so it renders just
``vocoder_context_tokens`` before the new tokens: ``Window.v0``.  Of what it is given, the vocoder
renders only the audio the window keeps (``ChunkPolicy.kept_tokens``: the new tokens and the
crossfade before them); context and lookahead only feed it (gsv.models.sovits.vocoder, ``trim``).

When the server knows the listener's buffer (``relaxed``), a window is cut only when the listener
would otherwise run dry, as large as the tokens allow (up to ``max_relaxed_chunk_tokens``): fewer,
larger windows, so less audio is rendered twice for context.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gsv import constants as C
from gsv.errors import OptionError


@dataclass(frozen=True)
class ChunkPolicy:
    """Chunk sizes in semantic tokens (1 token = 40 ms)."""

    # Chunk k must be produced (its tokens generated and its window decoded) while the audio already
    # sent plays.  Full size on 2 cores, one stream: ~24 ms per token end to end and ~100 ms of fixed
    # cost per window (its left context), so a chunk only gains buffer above ~15 tokens.  A second
    # chunk twice the first (8 then 16) underran once per request (8/8); 10 then 10 left 60-80 ms of
    # slack at chunks 2-3; 12 then 10 adds one more 2-token margin for ~50 ms more first-audio time.
    first_chunk_tokens: int = 12
    chunk_tokens: int = 10  # second chunk; later chunks grow by `growth` up to max_chunk_tokens
    growth: float = 1.5
    max_chunk_tokens: int = 48
    left_context_tokens: int = 12  # decoder (text encoder + flow) context before the new tokens
    lookahead_tokens: int = 3
    crossfade_samples: int = 640
    min_chunk_tokens: int = 4  # smallest early chunk cut when a listener would otherwise run dry
    # vocoder context before the new tokens: its influence is -40 dB at 4 tokens (full size); the
    # crossfade region sits inside it, rendered with >= 3.5 tokens of context
    vocoder_context_tokens: int = 4
    max_relaxed_chunk_tokens: int = 100  # largest window cut when the listener's buffer allows it

    def __post_init__(self):
        if self.first_chunk_tokens < 1 or self.chunk_tokens < 1 or self.max_chunk_tokens < self.chunk_tokens:
            raise OptionError("chunk sizes must be positive and max_chunk_tokens >= chunk_tokens")
        if self.min_chunk_tokens < 1:
            raise OptionError("min_chunk_tokens must be >= 1")
        if self.left_context_tokens < 1 or self.lookahead_tokens < 0 or self.growth < 1.0:
            raise OptionError("left context must be >= 1 token, lookahead >= 0, growth >= 1")
        if not 1 <= self.vocoder_context_tokens <= self.left_context_tokens:
            raise OptionError("the vocoder context must be 1 token to the decoder's left context")
        if not 0 < self.crossfade_samples <= self.vocoder_context_tokens * C.SAMPLES_PER_TOKEN:
            raise OptionError("crossfade must be positive and fit in the vocoder context")
        if self.max_relaxed_chunk_tokens < self.max_chunk_tokens:
            raise OptionError("max_relaxed_chunk_tokens must be >= max_chunk_tokens")

    @property
    def crossfade_tokens(self) -> int:
        """Whole tokens the crossfade reaches back before a window's new tokens."""
        return -(-self.crossfade_samples // C.SAMPLES_PER_TOKEN)

    def window(self, start: int, end: int, available: int, final: bool = False) -> "Window":
        """The window that emits tokens [start, end) of a segment with ``available`` tokens: the decoder's
        and the vocoder's left context and the lookahead, as far as the segment has them."""
        w0 = max(0, start - self.left_context_tokens)
        return Window(w0, start, end, min(available, end + self.lookahead_tokens), final,
                      v0=max(w0, start - self.vocoder_context_tokens))

    def steady_window(self, new_tokens: int) -> "Window":
        """A window of ``new_tokens`` in the middle of a long segment (full context and lookahead)."""
        start = self.left_context_tokens
        return self.window(start, start + new_tokens, start + new_tokens + self.lookahead_tokens)

    def kept_tokens(self, window: "Window") -> tuple[int, int]:
        """The tokens of ``window``, counted from its vocoded start, whose audio SegmentAssembler.accept
        reads: the new tokens and, after the segment's first window, the crossfade before them (the
        vocoder need not render the rest: its context and lookahead only feed the tokens in between)."""
        xf = self.crossfade_tokens if window.start > 0 else 0
        v0 = window.vocode_start
        return max(0, window.start - xf - v0), window.end - v0

    def chunk_size(self, index: int) -> int:
        if index == 0:
            return self.first_chunk_tokens
        return min(self.max_chunk_tokens, int(round(self.chunk_tokens * self.growth ** (index - 1))))


LATENCY_POLICIES = {
    "lowest": ChunkPolicy(first_chunk_tokens=6, chunk_tokens=6, lookahead_tokens=2, vocoder_context_tokens=3),
    "balanced": ChunkPolicy(),
    # quality: the vocoder's whole receptive field (its influence is exactly 0 beyond 7 tokens)
    "quality": ChunkPolicy(first_chunk_tokens=16, chunk_tokens=32, max_chunk_tokens=64, left_context_tokens=24,
                           lookahead_tokens=6, crossfade_samples=1280, vocoder_context_tokens=8,
                           max_relaxed_chunk_tokens=150),
}


# Streamed audio vs a whole-utterance decode of the same tokens and noise (streaming_quality), per
# latency mode: the bound every change to windows or chunking is checked against
# (tests/core/test_streaming_quality.py; measured figures in the README's streaming section).
# The tiny test model reaches only a few tokens, so streaming is nearly exact there; the full-size
# decoder's text/semantic attention is global (gsv-bench receptive-field: -33 dB per token, never 0),
# so a window sees a different context than the whole utterance and differs by a small, spread error.
STREAMING_QUALITY_BOUNDS = {
    "tiny": {mode: {"snr_db": 40.0, "join_snr_db_min": 30.0, "log_mel_l1": 0.02} for mode in LATENCY_POLICIES},
    # measured (random full-size weights, one segment of up to 70 tokens): SNR 11.5-12.6 dB, join SNR >= 9 dB,
    # log-mel L1 0.095-0.104; a join misplaced by one token falls to about 0 dB
    "full_size": {mode: {"snr_db": 8.0, "join_snr_db_min": 5.0, "log_mel_l1": 0.15} for mode in LATENCY_POLICIES},
}


@dataclass(frozen=True)
class Window:
    """Decode tokens [w0, w1), vocode tokens [v0, w1); emit the audio of tokens [start, end)."""

    w0: int
    start: int
    end: int
    w1: int
    final: bool
    v0: int = -1  # -1: vocode the whole window (v0 = w0)

    @property
    def vocode_start(self) -> int:
        return self.w0 if self.v0 < 0 else self.v0


def _fade(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    fade_in = np.sin(0.5 * np.pi * t) ** 2  # Hann half-window: fade_in + fade_out == 1
    return fade_in.astype(np.float32), (1.0 - fade_in).astype(np.float32)


class SegmentAssembler:
    """Chunking state of one text segment (belongs to the request's session)."""

    def __init__(self, policy: ChunkPolicy, samples_per_token: int = C.SAMPLES_PER_TOKEN):
        self.policy = policy
        self.spt = samples_per_token
        self.emitted = 0  # tokens whose audio is out (except the held-back tail)
        self.scheduled = 0  # tokens covered by windows handed out (>= emitted while a decode is in flight)
        self.chunks = 0  # windows handed out
        self.tail = np.zeros(0, dtype=np.float32)  # rendering of the last `crossfade` samples before `emitted`
        self.done = False

    def next_window(self, available: int, finished: bool, urgent: bool = False, relaxed: bool = False,
                    floor: int = 0) -> Window | None:
        """The next window to decode given ``available`` tokens, or None when not ready.

        ``urgent``: the listener will run out of audio before the planned chunk could be ready, so
        cut a shorter one now from what is there (at least ``min_chunk_tokens``, lookahead kept).
        ``relaxed``: the caller tracks the listener's buffer and sets ``urgent`` in time, so after the
        first chunk the planned size is ``max_relaxed_chunk_tokens``: windows are cut when urgent.
        ``floor``: no window after the first is cut smaller than this (a smaller one would cost more
        than the audio it adds: gsv.pacing), except the segment's last.
        """
        if self.done:
            return None
        p = self.policy
        floor = floor if self.chunks else 0  # the first chunk keeps its size: it sets the first-audio time
        size = p.max_relaxed_chunk_tokens if relaxed and self.chunks else max(p.chunk_size(self.chunks), floor)
        start = self.scheduled
        if finished:
            if available <= start:
                return None  # nothing left to decode: the caller flushes the held tail with finish()
            end = start + size if available - start > size + p.lookahead_tokens else available
        else:
            if available - start >= size + p.lookahead_tokens:
                end = start + size
            elif urgent and available - start - p.lookahead_tokens >= max(p.min_chunk_tokens, floor):
                end = available - p.lookahead_tokens
            else:
                return None
        self.scheduled = end
        self.chunks += 1
        return p.window(start, end, available, final=finished and end == available)

    def finish(self) -> np.ndarray:
        """End of the segment with every token decoded: release the held-back tail."""
        out, self.tail, self.done = self.tail, np.zeros(0, dtype=np.float32), True
        return out

    def accept(self, window: Window, audio: np.ndarray) -> np.ndarray:
        """Audio of tokens [vocode_start, w1) -> the samples to emit now (windows must be accepted in order)."""
        if window.start != self.emitted:
            raise RuntimeError("windows accepted out of order")
        v0 = window.vocode_start
        spt = len(audio) / max(window.w1 - v0, 1)  # != 1280 only when speed != 1
        a = int(round((window.start - v0) * spt))
        b = int(round((window.end - v0) * spt))
        seg = audio[a:b]
        xf = self.tail.size
        out = []
        if xf:
            fade_in, fade_out = _fade(xf)
            new = audio[max(a - xf, 0) : a]
            if new.size == xf:
                out.append(self.tail * fade_out + new * fade_in)
            else:  # window too short to overlap (tiny segment): keep the old rendering
                out.append(self.tail)
        if window.final:
            out.append(seg)
            self.tail = np.zeros(0, dtype=np.float32)
            self.done = True
        else:
            hold = min(self.policy.crossfade_samples, seg.size)
            out.append(seg[: seg.size - hold])
            self.tail = seg[seg.size - hold :].copy()
        self.emitted = window.end
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)


def streaming_quality(whole: np.ndarray, streamed: np.ndarray, joins: list[int], sr: int = C.SAMPLE_RATE,
                      join_span: int = C.SAMPLES_PER_TOKEN) -> dict[str, float | int]:
    """How close streamed audio is to a whole-utterance decode of the same tokens and noise.

    ``joins``: sample offsets where chunks meet.  Returns the SNR of the streamed audio against the whole
    decode (dB), the lowest SNR within ``join_span`` samples either side of a join (a misplaced or badly
    cross-faded join shows here first) and the log-mel distance (gsv.audio.log_mel_distance).
    """
    import torch

    from gsv.audio import log_mel_distance

    if whole.shape != streamed.shape:
        raise ValueError(f"streamed audio has {streamed.size} samples, the whole decode {whole.size}")

    def snr(ref: np.ndarray, err: np.ndarray) -> float:
        e = float(np.sum(np.square(err, dtype=np.float64)))
        return float("inf") if e == 0 else 10 * np.log10(max(float(np.sum(np.square(ref, dtype=np.float64))), 1e-30) / e)

    err = streamed - whole
    inner = [j for j in joins if 0 < j < whole.size]
    join_snr = [snr(whole[max(0, j - join_span): j + join_span], err[max(0, j - join_span): j + join_span])
                for j in inner]
    return {"snr_db": snr(whole, err), "join_snr_db_min": min(join_snr) if join_snr else float("inf"),
            "joins": len(inner),
            "log_mel_l1": log_mel_distance(torch.from_numpy(whole).unsqueeze(0), torch.from_numpy(streamed).unsqueeze(0))}
