"""Pacing live streams against their listeners: what a decoder call costs, and the smallest window
worth cutting early.

A window cut early for a listener about to run dry costs a fixed part (the decoder's text encoder and
flow over the left context, the call itself) plus the vocoded tokens, context and lookahead included.
Cut too small, a window renders less new audio than the time it and the GPT steps behind it take, so
the next one is even more urgent, is cut smaller still, and the stream underruns for good (measured:
one full-size FP32 stream on 2 cores decoded 1.8x the audio it emitted).  A window of at least the
break-even size pays for itself; below it, cutting early only adds decoder work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from gsv import constants as C

# Safety factor on the break-even window: the cost estimates are averages over calls that vary.
BREAK_EVEN_MARGIN = 1.25


@dataclass
class DecodeCost:
    """Running linear fit ``seconds = fixed + per_token * tokens`` over recent decoder calls (weights decay
    by ``decay`` per call), so a window of any size can be predicted.  A per-token average alone charges
    small windows too little and large ones too much, because of the fixed part."""

    decay: float = 0.8
    _w: float = 0.0  # sum of weights
    _sx: float = 0.0
    _sy: float = 0.0
    _sxx: float = 0.0
    _sxy: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        d = self.decay
        self._w = d * self._w + 1.0
        self._sx = d * self._sx + tokens
        self._sy = d * self._sy + seconds
        self._sxx = d * self._sxx + tokens * tokens
        self._sxy = d * self._sxy + tokens * seconds

    @property
    def known(self) -> bool:
        return self._w > 0.0

    def coefficients(self) -> tuple[float, float]:
        """(fixed seconds per call, seconds per token); (0, 0) before any call.  While the recent calls
        had (nearly) one size, the fixed part cannot be told apart: everything is charged per token."""
        if self._w == 0.0 or self._sx == 0.0:
            return 0.0, 0.0
        mx, my = self._sx / self._w, self._sy / self._w
        var = self._sxx / self._w - mx * mx
        average = my / mx
        if var < 1.0:  # tokens^2: all calls of about one size
            return 0.0, average
        per_token = (self._sxy / self._w - mx * my) / var
        fixed = my - per_token * mx
        if per_token <= 0.0 or fixed < 0.0:  # noise bigger than the signal: fall back to the average
            return 0.0, average
        return fixed, per_token

    def predict(self, tokens: int) -> float:
        fixed, per_token = self.coefficients()
        return fixed + per_token * tokens


def break_even_tokens(fixed_s: float, per_token_s: float, context_tokens: int, step_s: float, rows: int,
                      speed: float = 1.0) -> int | None:
    """Smallest early window (new tokens) whose audio pays for making it, or None when no size does.

    With ``rows`` streams sharing the machine, every token's worth of everyone's audio (40 ms / speed)
    costs one GPT step (``step_s``) plus ``rows`` tokens of decoding, and every window of ``n`` new
    tokens adds its fixed part and its ``context_tokens`` (vocoder context + lookahead):
        n * token_s >= n * (step_s + rows * per_token_s) + rows * (fixed_s + context_tokens * per_token_s)
    None: the machine cannot keep these streams up at any window size (overload); early cuts would
    only add decoder work, so the caller uses the planned sizes."""
    token_s = C.SAMPLES_PER_TOKEN / C.SAMPLE_RATE / speed
    spare = token_s - step_s - rows * per_token_s
    if spare <= 0.0:
        return None
    return math.ceil(BREAK_EVEN_MARGIN * rows * (fixed_s + context_tokens * per_token_s) / spare)
