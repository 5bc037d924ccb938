"""Read (and write) upstream GPT-SoVITS checkpoint files exactly as upstream's code does.

* GPT ``*.ckpt``: ``OrderedDict(weight=<fp16 state dict, keys prefixed 'model.'>, config=<dict>, info=str)``.
* SoVITS ``*.pth``: ``OrderedDict(weight=<fp16 dict, enc_q stripped>, config=<utils.HParams>, info=str)``;
  the first two bytes may be a version header instead of ``PK`` (``00``..``06``), weight-normed
  layers store ``weight_g``/``weight_v``.

Loading never executes pickled code (:mod:`gsv.checkpoint.torchzip`).  The version is decided from
the header and then from the tensors themselves (shapes and key families), which is more reliable
than upstream's file-size heuristic; unsupported versions are refused by name.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gsv.checkpoint.torchzip import HParams, hparams_to_plain, load_torch_zip, save_torch_zip
from gsv.errors import CheckpointError, UnsupportedVersionError
from gsv.models.config import GPTConfig, SoVITSConfig
from gsv.models.weightnorm import fold, magnitude

log = logging.getLogger(__name__)

# upstream process_ckpt.head2version
HEADER_VERSIONS = {b"00": "v1", b"01": "v2", b"02": "v3", b"03": "v3", b"04": "v4", b"05": "v2Pro", b"06": "v2ProPlus"}
SUPPORTED_VERSIONS = ("v1", "v2")
GPT_PREFIX = "model."


@dataclass
class UpstreamGPT:
    config: GPTConfig
    state_dict: dict[str, torch.Tensor]  # float32, without the 'model.' prefix
    raw_config: dict[str, Any]
    info: str
    version: str
    sha256: str = ""


@dataclass
class UpstreamSoVITS:
    config: SoVITSConfig
    state_dict: dict[str, torch.Tensor]  # float32, weight norm folded; enc_q.* kept when present
    raw_config: dict[str, Any]
    info: str
    version: str
    header: str
    sha256: str = ""
    has_posterior: bool = False
    posterior_keys: list[str] = field(default_factory=list)


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_bytes(path: str | Path) -> bytes:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, not a checkpoint file")
    try:
        return p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read ({e.strerror})") from None


def read_checkpoint(path: str | Path) -> tuple[bytes, Any, bytes]:
    """(header bytes, unpickled object, raw file bytes) of an upstream checkpoint; restores 'PK' when a version header is present."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise CheckpointError(f"{path}: not a checkpoint (file of {len(data)} bytes)")
    header = data[:2]
    payload = data
    if header != b"PK":
        if header not in HEADER_VERSIONS or data[2:4] != b"\x03\x04":
            raise CheckpointError(f"{path}: not a GPT-SoVITS checkpoint (unknown file header {header!r})")
        payload = b"PK" + data[2:]
    try:
        obj = load_torch_zip(payload)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return header, obj, data


def _weights_of(path, obj) -> tuple[dict[str, torch.Tensor], Any, str]:
    if not isinstance(obj, dict) or "weight" not in obj:
        raise CheckpointError(f"{path}: not a GPT-SoVITS weights file (no 'weight' entry; a full training checkpoint?)")
    weight = obj["weight"]
    if not isinstance(weight, dict) or not all(isinstance(v, torch.Tensor) for v in weight.values()):
        raise CheckpointError(f"{path}: 'weight' is not a dict of tensors")
    info = obj.get("info", "")
    return dict(weight), obj.get("config"), info if isinstance(info, str) else str(info)


def looks_like_gpt(weight: dict) -> bool:
    return any(k.startswith(GPT_PREFIX + "ar_") or k.startswith(GPT_PREFIX + "h.layers") for k in weight)


def looks_like_sovits(weight: dict) -> bool:
    return any(k.startswith(("enc_p.", "dec.", "flow.", "cfm.", "ref_enc.")) for k in weight)


# ---------------------------------------------------------------------------------------- GPT
def load_gpt(path: str | Path) -> UpstreamGPT:
    header, obj, data = read_checkpoint(path)
    weight, config, info = _weights_of(path, obj)
    if header != b"PK" or (not looks_like_gpt(weight) and looks_like_sovits(weight)):
        raise CheckpointError(f"{path}: this is a SoVITS (.pth) checkpoint, not a GPT (.ckpt) one")
    if not looks_like_gpt(weight):
        raise CheckpointError(f"{path}: not a GPT-SoVITS GPT checkpoint (no 'model.*' text-to-semantic weights)")
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{path}: GPT checkpoint has no usable 'config' dict")
    try:
        cfg = GPTConfig.from_upstream(config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: GPT config is incomplete or invalid ({e})") from None
    sd = {}
    for k, v in weight.items():
        if not k.startswith(GPT_PREFIX):
            raise CheckpointError(f"{path}: unexpected GPT key {k!r} (every key should start with 'model.')")
        sd[k[len(GPT_PREFIX):]] = v.float()
    version = {512: "v1", 732: "v2"}.get(cfg.phoneme_vocab_size)
    if version is None:
        raise CheckpointError(f"{path}: unknown GPT phoneme vocabulary size {cfg.phoneme_vocab_size}")
    check_state_dict(path, sd, gpt_reference_shapes(cfg), kind="GPT")
    return UpstreamGPT(cfg, sd, hparams_to_plain(config), info, version, file_sha256(data))


def gpt_reference_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    from gsv.models.gpt import Text2SemanticGPT

    with torch.device("meta"):
        model = Text2SemanticGPT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------- SoVITS
def detect_sovits_version(header: bytes, weight: dict[str, torch.Tensor], hps: dict | None) -> str:
    """v1 / v2 / v2Pro / v2ProPlus / v3 / v4 from the header bytes and the tensors."""
    model_cfg = (hps or {}).get("model", {}) if isinstance(hps, dict) else {}
    if any(k.startswith("cfm.") for k in weight) or header in (b"02", b"03", b"04"):
        declared = model_cfg.get("version") if isinstance(model_cfg, dict) else None
        if declared in ("v3", "v4"):
            return declared
        return HEADER_VERSIONS.get(header, "v3")
    if "sv_emb.weight" in weight or header in (b"05", b"06"):
        if header == b"06" or int(model_cfg.get("upsample_initial_channel", 512) or 512) == 768:
            return "v2ProPlus"
        return "v2Pro"
    emb = weight.get("enc_p.text_embedding.weight")
    if emb is None:
        raise CheckpointError("missing enc_p.text_embedding.weight")
    return "v1" if emb.shape[0] == 322 else "v2"


def fold_weight_norm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace ``X.weight_g``/``X.weight_v`` with ``X.weight = g * v / ||v||`` (norm over all dims but 0)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith(".weight_v"):
            continue
        if k.endswith(".weight_g"):
            base = k[: -len("_g")]
            wv = sd.get(base + "_v")
            if wv is None:
                raise CheckpointError(f"{base}_g without {base}_v")
            out[base] = fold(v.float(), wv.float())
        else:
            out[k] = v
    return out


def load_sovits(path: str | Path) -> UpstreamSoVITS:
    header, obj, data = read_checkpoint(path)
    weight, config, info = _weights_of(path, obj)
    if looks_like_gpt(weight):
        raise CheckpointError(f"{path}: this is a GPT (.ckpt) checkpoint, not a SoVITS (.pth) one")
    if not looks_like_sovits(weight):
        raise CheckpointError(f"{path}: not a GPT-SoVITS SoVITS checkpoint (no enc_p/dec/flow weights)")
    hps = hparams_to_plain(config) if isinstance(config, (dict, HParams)) else None
    try:
        version = detect_sovits_version(header, weight, hps)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(version, str(path))
    if not isinstance(hps, dict) or "model" not in hps or "data" not in hps:
        raise CheckpointError(f"{path}: SoVITS checkpoint has no usable 'config' (HParams with model/data)")
    try:
        cfg = SoVITSConfig.from_upstream(hps, version)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: SoVITS config is incomplete or invalid ({e})") from None
    sd = {k: v.float() for k, v in fold_weight_norm(weight).items()}
    posterior = [k for k in sd if k.startswith("enc_q.")]
    ref = sovits_reference_shapes(cfg, with_posterior=bool(posterior))
    check_state_dict(path, sd, ref, kind="SoVITS", optional_prefixes=("enc_q.",))
    return UpstreamSoVITS(cfg, sd, hps, info, version, header.decode("ascii", "replace"), file_sha256(data),
                          bool(posterior), posterior)


def sovits_reference_shapes(cfg: SoVITSConfig, with_posterior: bool = False) -> dict[str, tuple[int, ...]]:
    from gsv.models.sovits.model import SoVITS

    with torch.device("meta"):
        model = SoVITS(cfg, with_posterior=with_posterior)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict(path, sd: dict, ref: dict, kind: str, optional_prefixes: tuple[str, ...] = ()) -> None:
    """Missing keys and wrong shapes are errors; unexpected keys are logged and ignored."""
    missing = [k for k in ref if k not in sd and not k.startswith(optional_prefixes)]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(f"{path}: {kind} checkpoint is missing {len(missing)} tensors: {', '.join(missing[:3])}{more}")
    for k, shape in ref.items():
        if k in sd and tuple(sd[k].shape) != shape:
            raise CheckpointError(f"{path}: {kind} tensor {k} has shape {tuple(sd[k].shape)}, expected {shape}")
    extra = [k for k in sd if k not in ref]
    if extra:
        log.warning("%s: ignoring %d unexpected %s tensors (e.g. %s)", path, len(extra), kind, extra[0])
        for k in extra:
            del sd[k]


# ---------------------------------------------------------------------------------------- writing
# modules upstream wraps in (old-style) weight norm, so its files store weight_g/weight_v for them
WEIGHT_NORM_MODULES = re.compile(
    r"^(dec\.ups\.\d+|dec\.resblocks\.\d+\.convs[12]\.\d+"
    r"|(flow\.flows\.\d+|enc_q)\.enc\.(in_layers\.\d+|res_skip_layers\.\d+|cond_layer))$"
)


def weight_norm_module_names(state_dict_keys) -> set[str]:
    """Names of the modules stored with weight_g/weight_v in upstream SoVITS files."""
    return {k[: -len(".weight")] for k in state_dict_keys
            if k.endswith(".weight") and WEIGHT_NORM_MODULES.match(k[: -len(".weight")])}


def unfold_weight_norm(sd: dict[str, torch.Tensor], wn_modules: set[str]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`fold_weight_norm` for the modules named in ``wn_modules`` (upstream key order:
    bias, weight_g, weight_v).  g = ||w|| over all dims but 0, v = w (so g * v / ||v|| == w)."""
    out: dict[str, torch.Tensor] = collections.OrderedDict()
    for k, v in sd.items():
        base = k[: -len(".weight")] if k.endswith(".weight") else None
        if base is not None and base in wn_modules:
            if base + ".bias" in sd:
                out[base + ".bias"] = sd[base + ".bias"]
            out[base + ".weight_g"] = magnitude(v)
            out[base + ".weight_v"] = v
        elif k.endswith(".bias") and k[: -len(".bias")] in wn_modules:
            continue  # written with its weight
        else:
            out[k] = v
    return out


def save_gpt(path: str | Path, cfg: GPTConfig, state_dict: dict[str, torch.Tensor], info: str,
             extra_config: dict[str, Any] | None = None) -> None:
    """Write a GPT ``.ckpt`` in upstream's layout (fp16 tensors, 'model.' prefix, config dict)."""
    config = cfg.to_upstream()
    if extra_config:
        config.update(extra_config)
    weight = collections.OrderedDict((GPT_PREFIX + k, v.detach().half().cpu().clone()) for k, v in state_dict.items())
    save_torch_zip(collections.OrderedDict(weight=weight, config=config, info=info), path)


def save_sovits(path: str | Path, cfg: SoVITSConfig, state_dict: dict[str, torch.Tensor], info: str,
                hps: dict[str, Any], keep_posterior: bool = False) -> None:
    """Write a SoVITS ``.pth`` as upstream's ``savee`` does (fp16, enc_q stripped, HParams config, 'PK')."""
    sd = {k: v for k, v in state_dict.items() if keep_posterior or "enc_q" not in k}
    sd = unfold_weight_norm(sd, weight_norm_module_names(sd))
    weight = {k: v.detach().half().cpu().clone() for k, v in sd.items()}

    def to_hparams(d):
        h = HParams()
        h.__dict__.update({k: to_hparams(v) if isinstance(v, dict) else v for k, v in d.items()})
        return h

    save_torch_zip(collections.OrderedDict(weight=weight, config=to_hparams(hps), info=info), path)
