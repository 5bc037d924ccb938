"""The backend interface and the KV cache every GPT backend shares.

All tensors crossing the interface are torch tensors (CPU for ONNX Runtime, which reads them
zero-copy as numpy; CUDA for TensorRT).  Shapes (L layers, n rows, H heads, T cache positions, Dh = D / H):

* ``GPTBackend.prefill(phones [n, Tx], phone_lens [n], bert [n, 1024, Tx], prompt [n, Ty], prompt_lens [n])``
  -> ``(logits [n, V], k [L, n, H, S, Dh], v [L, n, H, S, Dh], seq_lens [n])``
* ``GPTBackend.decode_step(tokens [n], positions [n], k_cache [L, n, H, T, Dh], v_cache, kv_lens [n])``
  -> ``(logits [n, V], new_k [L, n, H, Dh], new_v [L, n, H, Dh])``
* ``AudioBackend.decode_audio(codes [B, Tc], code_lens [B], phones [B, Tp], phone_lens [B], ge [B, gin, 1],
  noise [B, C, F] | None, speed, vocode_from [B] | None, keep [B, 2] | None)`` -> ``audio [B, F' * 640]`` (rows
  longer than their valid length are padding); ``vocode_from`` (tokens, speed 1 only) vocodes each row from
  that token on, F' frames; ``keep`` (tokens from there, speed 1 only) the span whose audio the caller uses:
  the vocoder may skip the rest (zeros there when it does: ``trims_vocoder``), see gsv.models.sovits.vocoder

Sampling is never inside a backend: every row has its own parameters and random generator.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from gsv import constants as C
from gsv.models.config import GPTConfig, SoVITSConfig

CACHE_GROWTH = 128  # positions added when a row outgrows the cache (bounded attention waste)


@dataclass(frozen=True)
class ThreadPlan:
    """CPU threads of the GPT graphs and of the audio graphs (None = all cores).

    A server runs the two stages at once on one machine; ``audio_spinning=False`` makes the audio
    graphs' idle threads sleep instead of spinning, so the two stages share the cores instead of
    fighting over them.
    """

    gpt: int | None = None
    audio: int | None = None
    audio_spinning: bool = True

    def __post_init__(self):
        for n in (self.gpt, self.audio):
            if n is not None and n < 1:
                raise ValueError("thread counts must be >= 1")


@dataclass(frozen=True)
class MemoryPlan:
    """How a process holding several models keeps their memory down (ONNX Runtime CPU sessions; the
    other backends ignore it).

    ``shared_arena``: every session allocates its activations from one process-wide arena instead of
    one arena per session, so models do not each keep their peak activation memory.
    ``prepack``: ONNX Runtime's pre-packed copies of the weights for its matrix kernels (faster
    matrix products at the cost of a second copy of much of each model's weights)."""

    shared_arena: bool = False
    prepack: bool = True


class GPTBackend(ABC):
    config: GPTConfig
    device: torch.device
    name: str = "?"

    @abstractmethod
    def prefill(self, phones, phone_lens, bert, prompt, prompt_lens):
        ...

    @abstractmethod
    def decode_step(self, tokens, positions, k_cache, v_cache, kv_lens):
        ...

    def new_cache(self) -> "KVCache":
        c = self.config
        return KVCache(c.n_layer, c.n_head, c.hidden_dim // c.n_head, self.device, self.cache_dtype)

    cache_dtype: torch.dtype = torch.float32


class AudioBackend(ABC):
    config: SoVITSConfig
    device: torch.device
    name: str = "?"
    trims_vocoder: bool = False  # decode_audio's ``keep`` saves vocoder work (else the whole rows are rendered)

    @abstractmethod
    def decode_audio(self, codes, code_lens, phones, phone_lens, ge, noise=None, speed: float = 1.0,
                     vocode_from: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        ...

    def _vocoder_rows(self, z, frame_lens, vocode_from, keep) -> "VocoderRows":
        """decode_audio's token arguments -> the vocoder's rows (``keep`` honoured when this backend trims)."""
        f = C.FRAMES_PER_TOKEN
        return vocoder_rows(z, frame_lens, None if vocode_from is None else f * vocode_from,
                            None if keep is None or not self.trims_vocoder else f * keep)


def check_noise(noise: torch.Tensor, frames: int) -> None:
    """The caller sizes noise [B, C, frames] with :func:`gsv.models.sovits.model.latent_frames`, the
    same arithmetic as every backend; a different length is a bug, not something to pad away."""
    if noise.shape[2] != frames:
        raise ValueError(f"noise has {noise.shape[2]} frames; the decoder makes {frames}")


class KVCache:
    """Keys/values of the live rows: k, v [L, n, H, T, Dh] with ``lengths[n]`` valid positions per row.

    Heads are split (each layer's [n, H, T, Dh] slab is what attention reads, in place).  Rows are
    kept dense (row i of the tensors = live row i): adding rows concatenates, removing rows compacts,
    so a decode step always runs on exactly the live rows.  T grows in steps of CACHE_GROWTH when
    any row would overflow.
    """

    TIME = 3  # the position axis of k/v

    def __init__(self, n_layer: int, n_head: int, head_dim: int, device, dtype=torch.float32):
        self.n_layer, self.n_head, self.head_dim = n_layer, n_head, head_dim
        self.device, self.dtype = torch.device(device), dtype
        self.k = torch.zeros(n_layer, 0, n_head, 0, head_dim, device=self.device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.lengths = torch.zeros(0, dtype=torch.long)  # on CPU: read every step by the scheduler

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[self.TIME]

    @staticmethod
    def _pad_time(t: torch.Tensor, pad: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, 0, 0, pad)) if pad else t

    def _grow_to(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        new_t = ((needed + CACHE_GROWTH - 1) // CACHE_GROWTH) * CACHE_GROWTH
        pad = new_t - self.capacity
        self.k = self._pad_time(self.k, pad)
        self.v = self._pad_time(self.v, pad)

    def add_rows(self, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> list[int]:
        """Append prefill results (k/v [L, m, H, S, Dh], lengths [m]); returns the new rows' indices."""
        m, s = k.shape[1], k.shape[self.TIME]
        self._grow_to(max(s, int(lengths.max()) + 1))
        k = self._pad_time(k, self.capacity - s)
        v = self._pad_time(v, self.capacity - s)
        first = self.rows
        self.k = torch.cat([self.k, k.to(self.device, self.dtype)], dim=1)
        self.v = torch.cat([self.v, v.to(self.device, self.dtype)], dim=1)
        self.lengths = torch.cat([self.lengths, lengths.cpu().long()])
        return list(range(first, first + m))

    def remove_rows(self, rows: list[int]) -> None:
        """Drop rows; the remaining rows keep their order (indices shift down)."""
        if not rows:
            return
        keep = [i for i in range(self.rows) if i not in set(rows)]
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.k = self.k.index_select(1, idx)
        self.v = self.v.index_select(1, idx)
        self.lengths = self.lengths[torch.tensor(keep, dtype=torch.long)]
        self._shrink()

    def _shrink(self) -> None:
        """Give back capacity beyond what the longest live row needs (plus one growth step)."""
        need = int(self.lengths.max()) + 1 if self.rows else 0
        cap = ((need + CACHE_GROWTH - 1) // CACHE_GROWTH) * CACHE_GROWTH
        if cap + CACHE_GROWTH < self.capacity:
            self.k = self.k[:, :, :, :cap].contiguous()
            self.v = self.v[:, :, :, :cap].contiguous()

    def ensure_step(self) -> None:
        """Make room for one more position in every row."""
        if self.rows:
            self._grow_to(int(self.lengths.max()) + 1)

    def append(self, new_k: torch.Tensor, new_v: torch.Tensor) -> None:
        """Write one new position per row (new_k/new_v [L, n, H, Dh]) at index lengths, then advance."""
        if self.device.type == "cpu":
            # one small copy per row: a single advanced-index write is big enough for torch to start
            # its OpenMP pool, whose threads then spin for milliseconds and take the cores from the
            # next ONNX Runtime step (measured: a 10 ms decode step became 19 ms)
            for r, p in enumerate(self.lengths.tolist()):
                self.k[:, r, :, p] = new_k[:, r]
                self.v[:, r, :, p] = new_v[:, r]
        else:
            rows = torch.arange(self.rows, device=self.device)
            pos = self.lengths.to(self.device)
            self.k[:, rows, :, pos] = new_k.to(self.dtype)
            self.v[:, rows, :, pos] = new_v.to(self.dtype)
        self.lengths += 1

    def kv_lens(self) -> torch.Tensor:
        return self.lengths.to(self.device)


@dataclass(frozen=True)
class VocoderRows:
    """The vocoder's input for a batch of windows, each row shifted so that the audio its caller keeps
    starts at the same frame in every row (then one trim serves the whole batch).

    ``z`` [B, C, F]; row b holds its frames over [valid_from[b], valid_to[b]) and zeros elsewhere (the
    vocoder masks both sides, so a row decodes as if alone); ``trim`` (left, right) frames of F whose
    audio is not rendered; ``keep`` [B, 2] frames, relative to each row's first frame, whose audio the
    caller uses (all of them when no keep was asked for)."""

    z: torch.Tensor
    valid_from: torch.Tensor
    valid_to: torch.Tensor
    trim: tuple[int, int]
    keep: torch.Tensor

    @property
    def trimmed(self) -> bool:
        return self.trim != (0, 0)

    @property
    def rendered_frames(self) -> int:
        return self.z.shape[2] - self.trim[0] - self.trim[1]

    def graph_feeds(self, ge: torch.Tensor, trim_inputs: bool) -> dict[str, torch.Tensor]:
        """Inputs of the exported vocoder graph (``trim_inputs``: a graph with frame_from and trim)."""
        feeds = {"z": self.z, "ge": ge.float(), "frame_lens": self.valid_to}
        if trim_inputs:
            feeds.update(frame_from=self.valid_from, trim=torch.tensor(self.trim, dtype=torch.long))
        return feeds

    def place(self, audio: torch.Tensor, hop: int) -> torch.Tensor:
        """The vocoder's audio [B, rendered_frames * hop] -> [B, F' * hop], each row from its own first
        frame (F' its longest row), zero outside the kept frames: the layout of an untrimmed rendering."""
        if not self.trimmed and not bool(self.valid_from.any()):
            return audio
        lens = (self.valid_to - self.valid_from).tolist()
        out = audio.new_zeros(audio.shape[0], max(lens) * hop)
        for b, (f, (k0, k1)) in enumerate(zip(self.valid_from.tolist(), self.keep.tolist())):
            a = (f + k0 - self.trim[0]) * hop  # row b's frame k0 in the rendered audio
            out[b, k0 * hop : k1 * hop] = audio[b, a : a + (k1 - k0) * hop]
        return out


def vocoder_rows(z: torch.Tensor, frame_lens: torch.Tensor, start_frames: torch.Tensor | None = None,
                 keep_frames: torch.Tensor | None = None) -> VocoderRows:
    """z [B, C, F] with per-row valid lengths -> the vocoder's rows (:class:`VocoderRows`).

    ``start_frames`` [B]: each row is vocoded from that frame on (the decoder's wider left context is cut
    off here, between the two stages: the vocoder only needs what its receptive field reaches, see
    gsv.streaming).  ``keep_frames`` [B, 2]: the frames, counted from ``start_frames``, whose audio the
    caller will use; the rows are shifted to line up their first kept frame and the rest is trimmed."""
    lens = frame_lens.long().cpu()
    starts = torch.zeros_like(lens) if start_frames is None else start_frames.long().cpu()
    lens = lens - starts
    keep = torch.stack([torch.zeros_like(lens), lens], 1) if keep_frames is None else keep_frames.long().cpu()
    if bool((keep[:, 0] < 0).any() or (keep[:, 1] > lens).any() or (keep[:, 0] >= keep[:, 1]).any()):
        raise ValueError(f"kept frames {keep.tolist()} outside the rows' {lens.tolist()} frames")
    if keep_frames is None and start_frames is None:
        return VocoderRows(z, torch.zeros_like(lens), lens, (0, 0), keep)
    first = int(keep[:, 0].max())
    shift = first - keep[:, 0]  # [B] frames each row moves right
    valid_to = shift + lens
    frames = int(valid_to.max())
    out = z.new_zeros(z.shape[0], z.shape[1], frames)
    for b in range(z.shape[0]):
        s, n, o = int(starts[b]), int(lens[b]), int(shift[b])
        out[b, :, o : o + n] = z[b, :, s : s + n]
    trim = (first, frames - int((shift + keep[:, 1]).max())) if keep_frames is not None else (0, 0)
    return VocoderRows(out, shift, valid_to, trim, keep)
