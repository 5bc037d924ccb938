"""Checkpoints: the resumable training state, our float32 weights, and upstream release files.

Three kinds of files, written by rank 0 only, each atomically (temporary file in the same folder,
fsync, ``os.replace``, fsync of the folder), so a ``kill -9`` at any moment leaves the previous
version loadable:

* ``EXP/train/<stage>/state-last.pt``: everything a resume needs (model and optimizer states with
  weight-norm parametrizations as trained, GradScaler, progress counters, early-stopping record,
  every rank's RNG states).  Plain tensors and containers: loads with ``weights_only=True``.
* ``EXP/train/<stage>/{best,last}.safetensors``: float32 weights, weight norm folded (the SoVITS
  ones keep ``enc_q``), from which ``gsv-train bundle`` builds a bundle.
* ``EXP/weights/*.pth|*.ckpt``: upstream's release layout (fp16, ``enc_q`` stripped, HParams config)
  written with :mod:`gsv.checkpoint.upstream`, so upstream's loaders and ``gsv import`` accept them.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import torch

from gsv.errors import CheckpointError
from gsv.models.config import GPTConfig, SoVITSConfig

log = logging.getLogger(__name__)

STATE_FILE = "state-last.pt"
STATE_FORMAT = "gsv-train-state"
STATE_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``path``; the previous file survives any crash before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def trained_steps(exp_path: Path, stage: str) -> int | None:
    """Optimizer steps a stage of the experiment has done (None: never trained)."""
    f = Path(exp_path) / "train" / stage / STATE_FILE
    return int(load_state(f)["progress"]["global_step"]) if f.is_file() else None


def load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such training state") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged archives
        raise CheckpointError(f"{path}: damaged training state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a gsv-train training state")
    if state.get("format_version") != STATE_VERSION:
        raise CheckpointError(f"{path}: training state version {state.get('format_version')} is not supported")
    return state


def save_weights(path: Path, sd: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().float().contiguous().cpu() for k, v in sd.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata or {}))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: unreadable weights ({e})") from None


# ------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _py_state_to_tensor(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(_py_state_from_tensor(st["python"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _py_state_to_tensor(s) -> torch.Tensor:
    version, internal, gauss = s
    return torch.tensor([version, -1 if gauss is None else 1] + list(internal), dtype=torch.int64)


def _py_state_from_tensor(t: torch.Tensor):
    v = t.tolist()
    return (v[0], tuple(v[2:]), None)


# ------------------------------------------------------------------------------------------- releases
def upstream_hps(cfg: SoVITSConfig, train, name: str) -> dict[str, Any]:
    """An s2.json-shaped config (what upstream's ``savee`` pickles as HParams) for our training run."""
    return {
        "train": {
            "log_interval": train.log_every, "eval_interval": 500, "seed": train.seed, "epochs": train.epochs,
            "learning_rate": train.learning_rate, "betas": list(train.betas), "eps": train.eps,
            "batch_size": train.batch_size, "fp16_run": bool(train.fp16), "lr_decay": train.lr_decay,
            "segment_size": cfg.segment_size, "init_lr_ratio": 1, "warmup_epochs": 0, "c_mel": train.c_mel,
            "c_kl": train.c_kl, "text_low_lr_rate": train.text_low_lr_rate, "grad_ckpt": False,
            "pretrained_s2G": "", "pretrained_s2D": train.base_discriminator or "", "if_save_latest": True,
            "if_save_every_weights": True, "save_every_epoch": train.save_every_epoch or 1, "gpu_numbers": "0",
        },
        "data": {
            "max_wav_value": 32768.0, "sampling_rate": cfg.sampling_rate, "filter_length": cfg.filter_length,
            "hop_length": cfg.hop_length, "win_length": cfg.win_length, "n_mel_channels": cfg.n_mel_channels,
            "mel_fmin": 0.0, "mel_fmax": None, "add_blank": True, "n_speakers": cfg.n_speakers, "cleaned_text": True,
            "exp_dir": name,
        },
        "model": cfg.to_upstream_model(),
        "s2_ckpt_dir": name, "content_module": "cnhubert", "save_weight_dir": f"SoVITS_weights_{cfg.version}",
        "name": name, "version": cfg.version, "pretrain": None, "resume_step": None,
    }


def write_sovits_release(path: Path, cfg: SoVITSConfig, folded: dict[str, torch.Tensor], epoch: int, step: int,
                         train, name: str) -> None:
    from gsv.checkpoint.upstream import save_sovits

    path.parent.mkdir(parents=True, exist_ok=True)
    save_sovits(path, cfg, folded, f"{epoch}epoch_{step}iteration", upstream_hps(cfg, train, name), keep_posterior=False)


def gpt_release_config(train, name: str) -> dict[str, Any]:
    """The non-architecture sections upstream's s1 config carries (train/optimizer), for our run."""
    return {
        "optimizer": {"lr": train.first_step_lr or train.lr, "lr_init": 1e-5, "lr_end": train.lr,
                      "warmup_steps": 2000, "decay_steps": 40000},
        "train": {"batch_size": train.batch_size, "epochs": train.epochs, "exp_name": name, "gradient_clip": 1.0,
                  "if_dpo": bool(train.dpo), "precision": "16-mixed" if train.fp16 else "32",
                  "save_every_n_epoch": train.save_every_epoch or 1, "seed": train.seed,
                  "if_save_latest": True, "if_save_every_weights": True, "half_weights_save_dir": "GPT_weights_v2"},
    }


def write_gpt_release(path: Path, cfg: GPTConfig, sd: dict[str, torch.Tensor], epoch: int, train, name: str) -> None:
    from gsv.checkpoint.upstream import save_gpt

    path.parent.mkdir(parents=True, exist_ok=True)
    save_gpt(path, cfg, sd, f"GPT-e{epoch}", extra_config=gpt_release_config(train, name))
