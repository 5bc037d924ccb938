"""Prepared experiments, the validation split, datasets, the length-bucketing sampler and collates.

* :class:`Experiment` opens ``EXP/dataset.json`` written by ``gsv-train prepare``.
* The validation split is decided per item name by a stable hash, so it does not change when items
  are added and both stages hold out the same utterances.
* Datasets read one ``EXP/data/<name>.safetensors`` per item lazily (only the tensors the stage needs).
* :class:`BucketBatchSampler` groups items of similar length (upstream buckets by length too),
  shuffles the batches per epoch from ``seed + epoch`` and gives every DDP rank the same number of
  batches, so runs and resumes see the same order.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gsv.errors import GsvError
from trainer.prepare import DATASET_FILE, FORMAT


class ExperimentError(GsvError):
    """An experiment folder that cannot be trained from."""


class Experiment:
    def __init__(self, path: Path, index: dict[str, Any]):
        self.path = path
        self.index = index
        self.items: list[dict[str, Any]] = list(index.get("items", []))

    @classmethod
    def open(cls, path: str | Path) -> "Experiment":
        p = Path(path)
        f = p / DATASET_FILE
        if not f.is_file():
            raise ExperimentError(f"{p} is not a prepared experiment (no {DATASET_FILE}; run 'gsv-train prepare' first)")
        try:
            index = json.loads(f.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise ExperimentError(f"{f}: unreadable ({e})") from None
        if index.get("format") != FORMAT:
            raise ExperimentError(f"{f}: not a gsv-train experiment index")
        if not index.get("items"):
            raise ExperimentError(f"{p}: no prepared items (every line of the list was skipped)")
        return cls(p, index)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def base(self) -> str:
        return self.index["base"]

    def file(self, item: dict) -> Path:
        return self.path / item["file"]

    def stage_dir(self, stage: str) -> Path:
        return self.path / "train" / stage

    @property
    def weights_dir(self) -> Path:
        return self.path / "weights"

    def logs_dir(self, stage: str) -> Path:
        return self.path / "logs" / stage

    def split(self, val_fraction: float) -> tuple[list[dict], list[dict]]:
        """(train, validation) items; validation by a stable hash of each name."""
        if val_fraction <= 0 or len(self.items) < 4:
            return list(self.items), []
        score = {it["name"]: _unit_hash(it["name"]) for it in self.items}
        val = [it for it in self.items if score[it["name"]] < val_fraction]
        if not val:
            val = [min(self.items, key=lambda it: score[it["name"]])]
        if len(val) >= len(self.items):
            val = val[: len(self.items) - 1]
        names = {it["name"] for it in val}
        return [it for it in self.items if it["name"] not in names], val


def _unit_hash(name: str) -> float:
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:12], 16) / float(16**12)


def replicate(items: list, min_items: int) -> list:
    """Upstream repeats a dataset of fewer than ``min_items`` items ``max(2, min_items // n)`` times."""
    n = len(items)
    if n == 0 or n >= min_items:
        return list(items)
    return list(items) * max(2, min_items // n)


def load_tensors(path: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
            return {k: f.get_tensor(k) for k in names if k in keys}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise ExperimentError(f"{path}: damaged feature file ({e}); rerun 'gsv-train prepare'") from None


# ------------------------------------------------------------------------------------------- SoVITS
class SoVITSDataset(torch.utils.data.Dataset):
    """Items -> (ssl [C, F], spec [1025, F], wav [N] float, phones [P], sv [sv_dim] or None) with the SSL
    length forced to F; ``sv`` is the speaker-verification embedding of Pro experiments."""

    def __init__(self, exp: Experiment, items: list[dict], segment_frames: int):
        # upstream's bucket sampler drops items of <= 32 frames: a random slice needs that much
        self.items = [it for it in items if int(it["frames"]) > segment_frames]
        self.exp = exp

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        return [int(it["frames"]) for it in self.items]

    def __getitem__(self, i: int):
        it = self.items[i]
        t = load_tensors(self.exp.file(it), ("ssl", "spec", "wav", "phones", "sv"))
        ssl, spec = t["ssl"].float(), t["spec"].float()
        f = spec.shape[-1]
        if ssl.shape[-1] < f:  # upstream pads a one-frame shortfall by repetition
            ssl = F.pad(ssl.unsqueeze(0), (0, f - ssl.shape[-1]), mode="replicate")[0]
        ssl = ssl[:, :f]
        wav = t["wav"].float() / 32768.0
        sv = t.get("sv")
        return ssl, spec, wav, t["phones"].long(), None if sv is None else sv.float()


def collate_sovits(batch):
    """Right-pad to the batch maxima; SSL and spec share one even length (ssl_proj halves it, the
    25 Hz codes are doubled back).  Rows sorted by spectrogram length, longest first, as upstream.
    Returns ssl [B, C, L], spec [B, 1025, L], spec_lengths [B], wav [B, 1, N], wav_lengths [B],
    phones [B, P], phone_lengths [B], sv [B, sv_dim] (None when no item has one; zeros for an item
    without one, as upstream's loader does)."""
    batch = sorted(batch, key=lambda x: x[1].shape[-1], reverse=True)
    max_f = max(x[1].shape[-1] for x in batch)
    length = 2 * (max_f // 2 + 1)
    b = len(batch)
    ssl = torch.zeros(b, batch[0][0].shape[0], length)
    spec = torch.zeros(b, batch[0][1].shape[0], length)
    wav = torch.zeros(b, 1, max(x[2].shape[-1] for x in batch))
    phones = torch.zeros(b, max(x[3].shape[-1] for x in batch), dtype=torch.long)
    spec_lengths, wav_lengths, phone_lengths = (torch.zeros(b, dtype=torch.long) for _ in range(3))
    sv_dim = next((x[4].numel() for x in batch if x[4] is not None), 0)
    sv = torch.zeros(b, sv_dim) if sv_dim else None
    for i, (s, sp, w, ph, e) in enumerate(batch):
        ssl[i, :, : s.shape[-1]] = s
        spec[i, :, : sp.shape[-1]] = sp
        wav[i, 0, : w.shape[-1]] = w
        phones[i, : ph.shape[-1]] = ph
        spec_lengths[i], wav_lengths[i], phone_lengths[i] = sp.shape[-1], w.shape[-1], ph.shape[-1]
        if e is not None:
            sv[i] = e.reshape(-1)
    return ssl, spec, spec_lengths, wav, wav_lengths, phones, phone_lengths, sv


# ------------------------------------------------------------------------------------------- GPT
def gpt_keep(item: dict, max_sec: float, min_ps: float, max_ps: float, hz: int = 25) -> bool:
    """Upstream Text2SemanticDataset filters: length caps and 3..25 phones per second."""
    tokens, phones = int(item["n_tokens"]), int(item["n_phones"])
    if tokens == 0 or tokens > max_sec * hz or phones > max_sec * hz / 2.5:
        return False
    ratio = phones / (tokens / hz)
    return min_ps <= ratio <= max_ps


class GPTDataset(torch.utils.data.Dataset):
    """Items -> (phones [P], semantic [T], bert [D, P] or None).

    ``prompt_pairs`` p: a share p of the items (chosen by (seed, epoch, index)) come with another utterance
    of the same speaker in front, as inference lays them out: phones = prompt's ++ target's, semantic =
    prompt's ++ target's (the reference's tokens are the prompt the GPT continues).  Upstream trains on
    single utterances and relies on its large pretraining to continue a prompt; a small base trained
    from scratch never learns to and ends the target early."""

    def __init__(self, exp: Experiment, items: list[dict], prompt_pairs: float = 0.0, seed: int = 0,
                 max_tokens: int | None = None):
        if not 0.0 <= prompt_pairs <= 1.0:
            raise ExperimentError(f"prompt_pairs is a share in [0, 1], got {prompt_pairs}")
        self.exp = exp
        self.items = items
        self.prompt_pairs, self.seed, self.epoch, self.max_tokens = prompt_pairs, seed, 0, max_tokens
        by_speaker: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by_speaker.setdefault(str(it.get("speaker", "")), []).append(i)
        self.by_speaker = by_speaker

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def prompt_of(self, i: int) -> int | None:
        """The index of the utterance put in front of item i this epoch, or None."""
        if self.prompt_pairs <= 0.0:
            return None
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
        if float(torch.rand(1, generator=g)) >= self.prompt_pairs:
            return None
        me = self.items[i]
        room = None if self.max_tokens is None else self.max_tokens - int(me["n_tokens"])
        others = [j for j in self.by_speaker[str(me.get("speaker", ""))]
                  if self.items[j].get("name") != me.get("name")  # replicated items share a name
                  and (room is None or int(self.items[j]["n_tokens"]) <= room)]
        return others[int(torch.randint(len(others), (1,), generator=g))] if others else None

    def lengths(self) -> list[int]:
        return [int(it["n_tokens"]) for it in self.items]

    def _load(self, i: int):
        t = load_tensors(self.exp.file(self.items[i]), ("phones", "semantic", "bert"))
        return t["phones"].long(), t["semantic"].long(), t.get("bert")

    def __getitem__(self, i: int):
        phones, semantic, bert = self._load(i)
        j = self.prompt_of(i)
        if j is None:
            return phones, semantic, bert
        p_phones, p_semantic, p_bert = self._load(j)
        if (p_bert is None) != (bert is None):  # zh next to another language: BERT zeros for the other side
            p_bert = torch.zeros(bert.shape[0], p_phones.numel()) if p_bert is None else p_bert
            bert = torch.zeros(p_bert.shape[0], phones.numel()) if bert is None else bert
        joined_bert = None if bert is None else torch.cat([p_bert, bert], dim=-1)  # [D, P_prompt + P]
        return torch.cat([p_phones, phones]), torch.cat([p_semantic, semantic]), joined_bert


class GPTCollate:
    """phones right-padded with 0, semantic with EOS (upstream pad_val), BERT zero-padded (zeros for
    items without BERT features: every non-zh item).  -> dict of tensors."""

    def __init__(self, bert_dim: int, eos: int):
        self.bert_dim, self.eos = bert_dim, eos

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        b = len(batch)
        pmax = max(x[0].numel() for x in batch)
        tmax = max(x[1].numel() for x in batch)
        phones = torch.zeros(b, pmax, dtype=torch.long)
        semantic = torch.full((b, tmax), self.eos, dtype=torch.long)
        bert = torch.zeros(b, self.bert_dim, pmax)
        for i, (ph, se, be) in enumerate(batch):
            phones[i, : ph.numel()] = ph
            semantic[i, : se.numel()] = se
            if be is not None:
                if be.shape[0] != self.bert_dim:
                    raise ExperimentError(f"BERT features of {be.shape[0]} dims, the GPT expects {self.bert_dim}")
                bert[i, :, : be.shape[-1]] = be
        return {"phones": phones, "phone_lens": torch.tensor([x[0].numel() for x in batch]),
                "semantic": semantic, "semantic_lens": torch.tensor([x[1].numel() for x in batch]), "bert": bert}


# ------------------------------------------------------------------------------------------- sampling
class BucketBatchSampler:
    """Batches of similar lengths; order fixed by (seed, epoch); equal batch counts on every rank."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if not lengths:
            raise ExperimentError("no training items left after filtering")
        self.lengths = lengths
        self.batch_size = max(1, min(batch_size, len(lengths)))
        self.seed, self.rank, self.world, self.shuffle = seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        order.sort(key=lambda i: self.lengths[i])  # stable: equal lengths stay shuffled
        n_batches = math.ceil(n / bs)
        n_batches = math.ceil(n_batches / self.world) * self.world
        need = n_batches * bs
        padded = order + [order[i % n] for i in range(need - n)]  # upstream repeats items to fill batches
        all_batches = [padded[i * bs : (i + 1) * bs] for i in range(n_batches)]
        if self.shuffle:
            perm = torch.randperm(n_batches, generator=g).tolist()
            all_batches = [all_batches[i] for i in perm]
        return all_batches[self.rank :: self.world]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        n_batches = math.ceil(len(self.lengths) / self.batch_size)
        return math.ceil(n_batches / self.world)
