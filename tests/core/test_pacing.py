"""gsv.pacing: the decoder cost fit and the break-even early window."""
from __future__ import annotations

import math

import pytest

from gsv import constants as C
from gsv.pacing import BREAK_EVEN_MARGIN, DecodeCost, break_even_tokens


def test_decode_cost_separates_the_fixed_part_from_the_per_token_cost():
    cost = DecodeCost()
    for tokens in (8, 20, 11, 40, 15, 30):
        cost.add(tokens, 0.05 + 0.004 * tokens)
    fixed, per_token = cost.coefficients()
    assert fixed == pytest.approx(0.05, rel=1e-6) and per_token == pytest.approx(0.004, rel=1e-6)
    assert cost.predict(100) == pytest.approx(0.45, rel=1e-6)
    # a per-token average of the same calls would charge a 5-token window 40% too little
    average = sum(0.05 + 0.004 * t for t in (8, 20, 11, 40, 15, 30)) / sum((8, 20, 11, 40, 15, 30))
    assert 5 * average < 0.7 * cost.predict(5)


def test_decode_cost_follows_recent_calls_and_falls_back_to_an_average():
    cost = DecodeCost()
    assert not cost.known and cost.coefficients() == (0.0, 0.0) and cost.predict(10) == 0.0
    for _ in range(5):
        cost.add(10, 0.2)  # one window size: the fixed part cannot be told apart
    assert cost.known and cost.coefficients() == pytest.approx((0.0, 0.02))
    for tokens in (10, 30) * 30:  # the machine got twice as fast: old calls fade out
        cost.add(tokens, 0.5 * (0.1 + 0.01 * tokens))
    fixed, per_token = cost.coefficients()
    assert fixed == pytest.approx(0.05, rel=1e-3) and per_token == pytest.approx(0.005, rel=1e-3)


def test_break_even_window_pays_for_itself():
    token_s = C.SAMPLES_PER_TOKEN / C.SAMPLE_RATE
    fixed, per_token, ctx, step = 0.06, 0.01, 7, 0.018
    n = break_even_tokens(fixed, per_token, ctx, step, rows=1)
    assert n == math.ceil(BREAK_EVEN_MARGIN * (fixed + ctx * per_token) / (token_s - step - per_token))
    # a window of n tokens renders more audio than making it takes; one of n / margin - 1 does not
    cost = lambda k: k * step + fixed + (k + ctx) * per_token  # noqa: E731
    assert n * token_s > cost(n)
    small = int(n / BREAK_EVEN_MARGIN) - 1
    assert small * token_s < cost(small)
    # more streams sharing the machine need larger windows; faster speech (speed > 1) too
    assert break_even_tokens(fixed, per_token, ctx, step, rows=2) > n
    assert break_even_tokens(fixed, per_token, ctx, step, rows=1, speed=1.2) > n


def test_no_window_breaks_even_under_overload():
    assert break_even_tokens(0.06, 0.01, 7, 0.031, rows=1) is None  # 31 + 10 ms of work per 40 ms token
    assert break_even_tokens(0.06, 0.005, 7, 0.02, rows=4) is None
