"""Read (and write) upstream GPT-SoVITS checkpoint files exactly as upstream's code does.

* GPT ``*.ckpt``: ``OrderedDict(weight=<fp16 state dict, keys prefixed 'model.'>, config=<dict>, info=str)``.
* SoVITS ``*.pth``: ``OrderedDict(weight=<fp16 dict, enc_q stripped>, config=<utils.HParams>, info=str)``;
  the first two bytes may be a version header instead of ``PK`` (``00``..``06``), weight-normed
  layers store ``weight_g``/``weight_v``.  v2Pro/v2ProPlus files are written by upstream's
  ``my_save2``: zip root ``archive/`` and the header ``05``/``06`` over ``PK``; the header, not the
  config, decides the model variant (as upstream's ``change_sovits_weights`` does).
* Speaker-verification ``pretrained_eres2netv2w24s4ep4.ckpt``: the bare ``state_dict()`` of
  ``ERes2NetV2(baseWidth=24, scale=4, expansion=4)`` (an OrderedDict carrying ``_metadata``, float32
  weights, int64 BatchNorm counters), loaded strictly by upstream.

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
from gsv.models.config import PRO_VERSIONS, GPTConfig, SoVITSConfig, SVConfig
from gsv.models.weightnorm import fold, magnitude

log = logging.getLogger(__name__)

# upstream process_ckpt.head2version
HEADER_VERSIONS = {b"00": "v1", b"01": "v2", b"02": "v3", b"03": "v3", b"04": "v4", b"05": "v2Pro", b"06": "v2ProPlus"}
SUPPORTED_VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus")
PRO_HEADERS = {"v2Pro": b"05", "v2ProPlus": b"06"}  # upstream process_ckpt.model_version2byte
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


@dataclass
class UpstreamSV:
    config: SVConfig
    state_dict: dict[str, torch.Tensor]  # the ERes2NetV2 trunk (float32), seg_1 dropped
    sha256: str = ""


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
def detect_sovits_version(header: bytes, weight: dict[str, torch.Tensor], hps: dict | None,
                          override: str | None = None) -> str:
    """v1 / v2 / v2Pro / v2ProPlus / v3 / v4 from the header bytes and the tensors.

    As upstream: a ``05``/``06`` header makes the model v2Pro/v2ProPlus whatever the config says
    (the config's ``model.version`` is only cross-checked, with a warning); the architecture sizes
    still come from the config.  A file with Pro weights but a plain ``PK`` start is refused, because
    upstream would build a v2 model from it and fail; ``override`` (the user's explicit choice)
    accepts it as that Pro variant.
    """
    model_cfg = (hps or {}).get("model", {}) if isinstance(hps, dict) else {}
    declared = model_cfg.get("version") if isinstance(model_cfg, dict) else None
    if any(k.startswith("cfm.") for k in weight) or header in (b"02", b"03", b"04"):
        if declared in ("v3", "v4"):
            return declared
        return HEADER_VERSIONS.get(header, "v3")
    has_sv = "sv_emb.weight" in weight
    if header in (b"05", b"06"):
        version = HEADER_VERSIONS[header]
        if override and override != version:
            raise CheckpointError(f"the file header says {version}; it cannot be read as {override}")
        if declared in PRO_VERSIONS and declared != version:
            log.warning("the file header says %s but its config says %s; using %s as upstream does",
                        version, declared, version)
        if not has_sv:
            raise CheckpointError(f"the header says {version} but the file has no speaker-verification "
                                  "layers (sv_emb); it is not a usable Pro model")
        return version
    if has_sv:
        if override in PRO_VERSIONS:
            return override
        kind = declared if declared in PRO_VERSIONS else "v2Pro/v2ProPlus"
        raise CheckpointError(
            f"the weights are {kind} (speaker-verification layers) but the file starts with {header!r} instead of "
            f"upstream's Pro header (05 = v2Pro, 06 = v2ProPlus), so upstream would build a v2 model and fail; "
            f"pass --sovits-version v2Pro or v2ProPlus to read it anyway")
    if override in PRO_VERSIONS:
        raise CheckpointError(f"--sovits-version {override}: the file has no speaker-verification layers (sv_emb)")
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


def load_sovits(path: str | Path, version_override: str | None = None) -> UpstreamSoVITS:
    """Read a SoVITS ``.pth``; ``version_override`` (v2Pro/v2ProPlus) reads Pro weights saved without their header."""
    header, obj, data = read_checkpoint(path)
    weight, config, info = _weights_of(path, obj)
    if looks_like_gpt(weight):
        raise CheckpointError(f"{path}: this is a GPT (.ckpt) checkpoint, not a SoVITS (.pth) one")
    if not looks_like_sovits(weight):
        raise CheckpointError(f"{path}: not a GPT-SoVITS SoVITS checkpoint (no enc_p/dec/flow weights)")
    hps = hparams_to_plain(config) if isinstance(config, (dict, HParams)) else None
    try:
        version = detect_sovits_version(header, weight, hps, version_override)
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
    """Write a SoVITS ``.pth`` as upstream's ``savee`` does (fp16, enc_q stripped, HParams config); v1/v2
    files start with 'PK' (``my_save``), v2Pro/v2ProPlus files have zip root ``archive/`` and the header
    ``05``/``06`` written over 'PK' (``my_save2``)."""
    sd = {k: v for k, v in state_dict.items() if keep_posterior or "enc_q" not in k}
    sd = unfold_weight_norm(sd, weight_norm_module_names(sd))
    weight = {k: v.detach().half().cpu().clone() for k, v in sd.items()}

    def to_hparams(d):
        h = HParams()
        h.__dict__.update({k: to_hparams(v) if isinstance(v, dict) else v for k, v in d.items()})
        return h

    obj = collections.OrderedDict(weight=weight, config=to_hparams(hps), info=info)
    if cfg.is_pro:
        save_torch_zip(obj, path, archive_name="archive", magic=PRO_HEADERS[cfg.version])
    else:
        save_torch_zip(obj, path)


# ---------------------------------------------------------------------------------------- speaker verification
def sv_config_from_state_dict(sd: dict[str, torch.Tensor]) -> SVConfig:
    """The ERes2NetV2 sizes a state dict was made with (the released file: 64 channels, w24 s4 e4, 3/4/6/3)."""
    try:
        m = int(sd["conv1.weight"].shape[0])
        num_blocks = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
        scale = len({k.split(".")[3] for k in sd if k.startswith("layer1.0.convs.")})
        width = int(sd["layer1.0.convs.0.weight"].shape[0])
        expansion = int(sd["layer1.0.conv3.weight"].shape[0]) // m
        seg_out, seg_in = (int(n) for n in sd["seg_1.weight"].shape)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise CheckpointError(f"not an ERes2NetV2 speaker-verification state dict (missing {e})") from None
    # seg_1 reads mean and std statistics: 2 x (feat_dim / 8) x 8m x expansion inputs
    feat_dim = seg_in // (2 * m * expansion)
    try:
        return SVConfig(m_channels=m, feat_dim=feat_dim, num_blocks=num_blocks, base_width=(width * 64 + m - 1) // m,
                        scale=scale, expansion=expansion, embedding_size=seg_out)
    except ValueError as e:
        raise CheckpointError(f"unusable ERes2NetV2 sizes ({e})") from None


def sv_reference_shapes(cfg: SVConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor upstream's strict load expects: the trunk plus the (unused) seg_1 projection."""
    from gsv.models.speaker_verification import ERes2NetV2

    with torch.device("meta"):
        model = ERes2NetV2(cfg)
    ref = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref["seg_1.weight"] = (cfg.embedding_size, 2 * cfg.embedding_dim)
    ref["seg_1.bias"] = (cfg.embedding_size,)
    return ref


def load_sv(path: str | Path) -> UpstreamSV:
    """Read the speaker-verification checkpoint of v2Pro/v2ProPlus (``pretrained_eres2netv2w24s4ep4.ckpt``)."""
    header, obj, data = read_checkpoint(path)
    if header != b"PK":
        raise CheckpointError(f"{path}: this is a SoVITS weights file (version header {header!r}), not the "
                              "speaker-verification model (pretrained_eres2netv2w24s4ep4.ckpt)")
    if isinstance(obj, dict) and "weight" in obj:
        raise CheckpointError(f"{path}: this is a GPT or SoVITS weights file, not the speaker-verification "
                              "model (pretrained_eres2netv2w24s4ep4.ckpt)")
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a speaker-verification checkpoint (expected the bare ERes2NetV2 "
                              "state dict that upstream loads strictly)")
    sd = dict(obj)
    try:
        cfg = sv_config_from_state_dict(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    ref = sv_reference_shapes(cfg)
    check_state_dict(path, sd, ref, kind="speaker-verification")
    trunk = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items() if not k.startswith("seg_1.")}
    return UpstreamSV(cfg, trunk, file_sha256(data))


def save_sv(path: str | Path, cfg: SVConfig, trunk: dict[str, torch.Tensor], seed: int = 0) -> None:
    """Write an ERes2NetV2 state dict in the released file's layout (float32, int64 BatchNorm counters,
    with a seg_1 projection: upstream's strict load needs it although inference never uses it; when
    ``trunk`` has none, a random one is made from ``seed``)."""
    sd = collections.OrderedDict((k, v.detach().cpu().clone()) for k, v in trunk.items())
    if "seg_1.weight" not in sd:
        g = torch.Generator().manual_seed(seed)
        fan_in = 2 * cfg.embedding_dim
        sd["seg_1.weight"] = torch.randn(cfg.embedding_size, fan_in, generator=g) / fan_in**0.5
        sd["seg_1.bias"] = torch.zeros(cfg.embedding_size)
    save_torch_zip(sd, path)
