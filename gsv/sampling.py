"""Per-request sampling of semantic tokens, as upstream GPT-SoVITS samples them.

Order per step (upstream ``logits_to_probs`` + ``sample``):

1. repetition penalty over every distinct token already in the row (prompt tokens included):
   ``l * rp`` if ``l < 0`` else ``l / rp``; the EOS decision below sees these penalised logits;
2. top-p (only when < 1) on the penalised logits, before temperature (the top token always kept);
3. ``logits / max(temperature, 1e-5)``;
4. top-k;
5. softmax, then ``argmax(p / Exp(1) noise)`` ("exponential race"), noise from the request's own
   generator so every request is reproducible from its seed regardless of batching.

EOS is banned for the first 11 steps.  A row stops when the sample *or* the argmax of the penalised
logits is EOS (the sampled token is then not kept) or when ``max_tokens`` tokens were produced.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import torch

from gsv import constants as C
from gsv.errors import OptionError

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request GPT sampling parameters (upstream defaults); validated at construction."""

    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.35
    seed: int | None = None  # None = a random seed, reported back to the caller
    max_tokens: int = C.MAX_TOKENS_PER_SEGMENT  # per text segment (1500 = 60 s)

    def __post_init__(self):
        def finite(name, v):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise OptionError(f"{name} must be a finite number, got {v!r}")

        finite("temperature", self.temperature)
        finite("top_p", self.top_p)
        finite("repetition_penalty", self.repetition_penalty)
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or not 1 <= self.top_k <= C.SEMANTIC_VOCAB + 1:
            raise OptionError(f"top_k must be an integer in [1, {C.SEMANTIC_VOCAB + 1}], got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise OptionError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 < self.temperature <= 10.0:
            raise OptionError(f"temperature must be in (0, 10], got {self.temperature}")
        if not 1.0 <= self.repetition_penalty <= 10.0:
            raise OptionError(f"repetition_penalty must be in [1, 10], got {self.repetition_penalty}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED):
            raise OptionError(f"seed must be an integer in [0, 2^63-1], got {self.seed!r}")
        if not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= C.MAX_TOKENS_PER_SEGMENT:
            raise OptionError(f"max_tokens must be in [1, {C.MAX_TOKENS_PER_SEGMENT}], got {self.max_tokens!r}")

    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else secrets.randbelow(2**31)


def make_generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


@dataclass
class RowSampler:
    """Sampling state of one row (one text segment of one request)."""

    options: SamplingOptions
    generator: torch.Generator
    vocab_size: int = C.SEMANTIC_VOCAB + 1
    eos: int = C.EOS_TOKEN
    tokens: list[int] = field(default_factory=list)  # generated tokens kept so far
    seen: torch.Tensor | None = None  # [vocab] bool: tokens in the row (prompt + generated)
    steps: int = 0  # decoding steps taken (upstream's loop index)
    finished: bool = False
    finish_reason: str = ""  # "eos" | "max_tokens"

    @classmethod
    def start(cls, options: SamplingOptions, generator: torch.Generator, prompt: list[int] | torch.Tensor,
              vocab_size: int = C.SEMANTIC_VOCAB + 1, eos: int = C.EOS_TOKEN) -> "RowSampler":
        seen = torch.zeros(vocab_size, dtype=torch.bool)
        p = torch.as_tensor(prompt, dtype=torch.long)
        if p.numel():
            seen[p] = True
        return cls(options, generator, vocab_size, eos, seen=seen)

    def penalised(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [vocab] (float32) -> repetition-penalised copy."""
        rp = self.options.repetition_penalty
        if rp == 1.0:
            return logits.clone()
        pen = torch.where(logits < 0, logits * rp, logits / rp)
        return torch.where(self.seen, pen, logits)

    def step(self, logits: torch.Tensor) -> int | None:
        """Consume the raw logits [vocab] of this row; return the kept token or None when the row stops."""
        if self.finished:
            raise RuntimeError("step() on a finished row")
        o = self.options
        logits = self.penalised(logits.float())
        if self.steps < C.MIN_TOKENS_BEFORE_EOS:
            logits[self.eos] = float("-inf")  # same as upstream slicing the EOS column off
        greedy = int(torch.argmax(logits))
        probs_logits = logits
        if o.top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(probs_logits, descending=True)
            cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
            remove_sorted = cum > o.top_p
            remove_sorted[0] = False
            remove = torch.zeros_like(remove_sorted).scatter(0, sorted_idx, remove_sorted)
            probs_logits = probs_logits.masked_fill(remove, float("-inf"))
        probs_logits = probs_logits / max(o.temperature, 1e-5)
        k = min(o.top_k, probs_logits.shape[-1])
        pivot = torch.topk(probs_logits, k).values[-1]
        probs_logits = torch.where(probs_logits < pivot, torch.full_like(probs_logits, float("-inf")), probs_logits)
        probs = torch.softmax(probs_logits, dim=-1)
        q = torch.empty_like(probs).exponential_(1, generator=self.generator)
        token = int(torch.argmax(probs / q))
        self.steps += 1
        if token == self.eos or greedy == self.eos:
            self.finished, self.finish_reason = True, "eos"
            return None
        self.tokens.append(token)
        self.seen[token] = True
        if len(self.tokens) >= o.max_tokens:
            self.finished, self.finish_reason = True, "max_tokens"
        return token

    @property
    def upstream_idx(self) -> int:
        """The loop index upstream's infer_panel returns (steps - 1)."""
        return self.steps - 1
