"""The bundle: the one contract between training, export and serving.

A directory::

    manifest.json        format/version info, architecture dataclasses, sources, artifacts
    gpt.safetensors      GPT weights (float32, upstream names without 'model.')
    sovits.safetensors   SoVITS weights (float32, weight norm folded; enc_q kept when the source had it)
    sv.safetensors       v2Pro/v2ProPlus only: the speaker-verification network (ERes2NetV2 trunk)
    hubert/  bert/       optional local model folders (copied, or referenced by absolute path)
    onnx/*.onnx (+ their weights, *.onnx.data, and verify.json), trt/*.plan   exported artifacts, listed in manifest["artifacts"]

Bundles are written into a temporary sibling directory and renamed into place, so an interrupted
write never leaves a half-written bundle under the final name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gsv import __version__
from gsv import constants as C
from gsv.errors import BundleError
from gsv.models.config import GPTConfig, SoVITSConfig, SVConfig

log = logging.getLogger(__name__)

FORMAT = "gsv-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GPT_FILE = "gpt.safetensors"
SOVITS_FILE = "sovits.safetensors"
SV_FILE = "sv.safetensors"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    gpt_config: GPTConfig
    sovits_config: SoVITSConfig
    sv_config: SVConfig | None = None  # v2Pro/v2ProPlus: the speaker-verification network
    _cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path) -> "Bundle":
        p = Path(path)
        if not p.exists():
            raise BundleError(f"bundle {p} does not exist")
        mpath = p / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{p} is not a bundle (no {MANIFEST})")
        try:
            manifest = json.loads(mpath.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise BundleError(f"{mpath}: unreadable manifest ({e})") from None
        if manifest.get("format") != FORMAT:
            raise BundleError(f"{mpath}: not a gsv bundle manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{mpath}: bundle format version {manifest.get('format_version')} is not supported "
                              f"(this gsv reads version {FORMAT_VERSION})")
        try:
            gpt = GPTConfig.from_dict(manifest["gpt"]["config"])
            sovits = SoVITSConfig.from_dict(manifest["sovits"]["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{mpath}: invalid architecture section ({e})") from None
        sv = None
        if manifest.get("sv"):
            try:
                sv = SVConfig.from_dict(manifest["sv"]["config"])
            except (KeyError, TypeError, ValueError) as e:
                raise BundleError(f"{mpath}: invalid speaker-verification section ({e})") from None
        if sovits.is_pro and sv is None:
            raise BundleError(f"bundle {p} holds a {sovits.version} SoVITS but no speaker-verification model (sv)")
        for key, fname in (("gpt", GPT_FILE), ("sovits", SOVITS_FILE), ("sv", SV_FILE)):
            if manifest.get(key) and not (p / manifest[key].get("file", fname)).is_file():
                raise BundleError(f"bundle {p} is incomplete: {manifest[key].get('file', fname)} is missing")
        return cls(p, manifest, gpt, sovits, sv)

    # ------------------------------------------------------------------ identity
    @property
    def bundle_id(self) -> str:
        """Hash of the model weights: voices record it to detect a change of models."""
        return self.manifest["bundle_id"]

    @property
    def symbol_version(self) -> str:
        return self.manifest["symbol_version"]

    @property
    def model_version(self) -> str:
        return self.manifest["model_version"]

    @property
    def is_pro(self) -> bool:
        """v2Pro/v2ProPlus: voices also carry speaker-verification embeddings."""
        return self.sovits_config.is_pro

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["sample_rate"])

    def _model_dir(self, key: str) -> Path | None:
        entry = self.manifest.get(key)
        if not entry:
            return None
        p = Path(entry["path"])
        p = p if p.is_absolute() else self.path / p
        if not p.is_dir():
            raise BundleError(f"bundle {self.path}: the {key} model folder {p} is missing")
        return p

    @property
    def hubert_dir(self) -> Path | None:
        return self._model_dir("hubert")

    @property
    def bert_dir(self) -> Path | None:
        return self._model_dir("bert")

    def prompt_space(self) -> str:
        """What a voice's prompt depends on besides its own audio and text: the phone table, the BERT and
        HuBERT models, the SSL projection and the quantizer (fine-tunes keep the base's).  Bundles with
        equal keys can share a voice's prompt; only its timbre is model-specific."""
        if "prompt_space" not in self._cache:
            h = hashlib.sha256(f"{self.symbol_version}|{self.gpt_config.bert_dim}".encode())
            for key in ("hubert", "bert"):
                folder = self._model_dir(key)
                h.update(f"|{key}:{folder_fingerprint(folder) if folder else 'none'}".encode())
            semantic = self._load(self.manifest["sovits"].get("file", SOVITS_FILE),
                                  lambda k: k.startswith(("ssl_proj.", "quantizer.")))
            for name in sorted(semantic):
                if name.endswith("_codebook.embed") or name.startswith("ssl_proj."):
                    h.update(name.encode() + semantic[name].float().contiguous().numpy().tobytes())
            self._cache["prompt_space"] = h.hexdigest()[:32]
        return self._cache["prompt_space"]

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("artifacts", []))

    # ------------------------------------------------------------------ weights
    def gpt_state_dict(self) -> dict[str, torch.Tensor]:
        return self._load(self.manifest["gpt"].get("file", GPT_FILE))

    def sovits_state_dict(self) -> dict[str, torch.Tensor]:
        return self._load(self.manifest["sovits"].get("file", SOVITS_FILE))

    def sv_state_dict(self) -> dict[str, torch.Tensor]:
        if not self.manifest.get("sv"):
            raise BundleError(f"bundle {self.path} has no speaker-verification model")
        return self._load(self.manifest["sv"].get("file", SV_FILE))

    @property
    def has_posterior_encoder(self) -> bool:
        """Whether the SoVITS weights include the posterior encoder (enc_q), which only training uses
        (bundles written by the trainer keep it); read from the file's index, no tensor is loaded."""
        return any(k.startswith("enc_q.") for k in self._load(self.manifest["sovits"].get("file", SOVITS_FILE),
                                                              names_only=True))

    def _load(self, fname: str, keep=None, names_only: bool = False):
        """The tensors of a weights file; ``keep(name)`` reads only those it accepts; ``names_only``: just
        the tensor names (from the file's header)."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            if keep is None and not names_only:
                return load_file(str(self.path / fname))
            with safe_open(str(self.path / fname), framework="pt") as f:
                if names_only:
                    return list(f.keys())
                return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
        except (SafetensorError, OSError, ValueError) as e:
            raise BundleError(f"{self.path / fname}: corrupt weights file ({e})") from None

    def load_gpt(self, device: str | torch.device = "cpu"):
        from gsv.models.gpt import Text2SemanticGPT

        model = Text2SemanticGPT(self.gpt_config)
        _load_into(model, self.gpt_state_dict(), self.path / GPT_FILE)
        return model.eval().to(device)

    def load_sovits(self, device: str | torch.device = "cpu", with_posterior: bool = False, reference_only: bool = False):
        """The SoVITS model.  ``reference_only``: only the parts that turn a reference into a voice
        (``extract_latent``, ``speaker_embedding``, ``text_condition``); the text encoder, flow and
        vocoder (about 90% of the weights) are never built, for processes whose synthesis runs elsewhere."""
        from gsv.models.sovits.model import SoVITS

        if reference_only:
            return self._load_sovits_reference(device)
        sd = self.sovits_state_dict()
        has_q = any(k.startswith("enc_q.") for k in sd)
        model = SoVITS(self.sovits_config, with_posterior=with_posterior)
        if not with_posterior:
            sd = {k: v for k, v in sd.items() if not k.startswith("enc_q.")}
        elif not has_q:
            log.info("bundle has no posterior encoder (enc_q); it starts from fresh weights")
            missing = model.load_state_dict(sd, strict=False).missing_keys
            if any(not k.startswith("enc_q.") for k in missing):
                raise BundleError(f"{self.path / SOVITS_FILE}: missing tensors {missing[:3]}")
            return model.to(device)
        _load_into(model, sd, self.path / SOVITS_FILE)
        return model.eval().to(device)

    def _load_sovits_reference(self, device):
        from gsv.models.sovits.model import REFERENCE_PARTS, SoVITS

        # built directly (not on the meta device and cut down: meta tensors import torch._dynamo, with
        # triton and sympy, about 130 MB resident in a server that never compiles anything)
        model = SoVITS(self.sovits_config, reference_only=True)
        _load_into(model, self._load(SOVITS_FILE, lambda k: k.split(".", 1)[0] in REFERENCE_PARTS),
                   self.path / SOVITS_FILE)
        return model.eval().to(device)

    def load_sv(self, device: str | torch.device = "cpu", fuse: bool = True):
        """The speaker-verification network (16 kHz audio -> embedding) of a Pro bundle; ``fuse`` folds its
        BatchNorms into the convolutions (inference only; the weights then lose upstream's layout)."""
        from gsv.models.speaker_verification import SpeakerVerifier

        if self.sv_config is None:
            raise BundleError(f"bundle {self.path} ({self.model_version}) has no speaker-verification model")
        model = SpeakerVerifier(self.sv_config)
        _load_into(model.model, self.sv_state_dict(), self.path / SV_FILE)
        if fuse:
            model.for_inference()
        return model.eval().to(device)


_FINGERPRINTS: dict[tuple, str] = {}
FINGERPRINT_SAMPLES = 16  # 64 KiB blocks hashed per file, spread over it (plus its size and both ends)


def folder_fingerprint(folder: Path) -> str:
    """A content key of a model folder (HuBERT, BERT), equal for copies of one folder: every file's
    name, size and sampled blocks (a changed model rewrites all of its weights; hashing every byte of
    a 1.3 GB BERT at each start would cost seconds).  Cached per path, size and modification time."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    stat_key = (str(folder),) + tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stat_key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for p in files:
            size = p.stat().st_size
            h.update(f"{p.relative_to(folder)}|{size}|".encode())
            with open(p, "rb") as f:
                for i in range(FINGERPRINT_SAMPLES + 1):
                    f.seek(max(0, min(size - 65536, i * size // FINGERPRINT_SAMPLES)))
                    h.update(f.read(65536))
        _FINGERPRINTS[stat_key] = h.hexdigest()[:32]
    return _FINGERPRINTS[stat_key]


def _load_into(model: torch.nn.Module, sd: dict, where: Path) -> None:
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise BundleError(f"{where}: weights do not match the architecture in the manifest ({str(e)[:300]})") from None


# ---------------------------------------------------------------------------------------- writing
def write_bundle(
    out: str | Path,
    gpt_config: GPTConfig,
    gpt_state: dict[str, torch.Tensor],
    sovits_config: SoVITSConfig,
    sovits_state: dict[str, torch.Tensor],
    *,
    sources: dict[str, Any] | None = None,
    hubert_dir: str | Path | None = None,
    bert_dir: str | Path | None = None,
    sv_config: SVConfig | None = None,
    sv_state: dict[str, torch.Tensor] | None = None,
    copy_models: bool = True,
    force: bool = False,
) -> Bundle:
    """Write a complete bundle atomically and return it opened (Pro models need the SV network)."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} already exists (use --force to replace it)")
    if gpt_config.phoneme_vocab_size != sovits_config.n_symbols and not (
        gpt_config.phoneme_vocab_size == 512 and sovits_config.n_symbols == 322
    ):
        raise BundleError(
            f"GPT ({gpt_config.phoneme_vocab_size} phone symbols) and SoVITS ({sovits_config.n_symbols} symbols) "
            "are of different GPT-SoVITS versions"
        )
    if sovits_config.is_pro:
        if sv_config is None or sv_state is None:
            raise BundleError(f"a {sovits_config.version} model needs its speaker-verification model "
                              "(pretrained_eres2netv2w24s4ep4.ckpt)")
        if sv_config.embedding_dim != sovits_config.sv_dim:
            raise BundleError(f"the speaker-verification model gives {sv_config.embedding_dim}-d embeddings but the "
                              f"SoVITS expects {sovits_config.sv_dim}")
    elif sv_config is not None:
        raise BundleError(f"a {sovits_config.version} model does not use a speaker-verification model "
                          "(only v2Pro/v2ProPlus do)")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a bundle is an ordinary folder
    except OSError as e:
        raise BundleError(f"cannot write under {parent}: {e.strerror}") from None
    try:
        save_file({k: v.detach().float().contiguous() for k, v in gpt_state.items()}, str(tmp / GPT_FILE))
        save_file({k: v.detach().float().contiguous() for k, v in sovits_state.items()}, str(tmp / SOVITS_FILE))
        gpt_sha, sovits_sha = sha256_file(tmp / GPT_FILE), sha256_file(tmp / SOVITS_FILE)
        weight_files = [tmp / GPT_FILE, tmp / SOVITS_FILE]
        sv_entry = None
        if sv_config is not None:
            save_file({k: v.detach().contiguous() if not v.is_floating_point() else v.detach().float().contiguous()
                       for k, v in sv_state.items()}, str(tmp / SV_FILE))
            sv_entry = {"file": SV_FILE, "sha256": sha256_file(tmp / SV_FILE), "config": sv_config.to_dict()}
            weight_files.append(tmp / SV_FILE)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_version": sovits_config.version,
            "symbol_version": sovits_config.symbol_version,
            "sample_rate": sovits_config.sampling_rate,
            "samples_per_token": C.SAMPLES_PER_TOKEN,
            # a Pro bundle's id covers its SV network too: voices store embeddings computed with it
            "bundle_id": hashlib.sha256((gpt_sha + sovits_sha + (sv_entry or {}).get("sha256", "")).encode()).hexdigest()[:32],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "gsv_version": __version__,
            "gpt": {"file": GPT_FILE, "sha256": gpt_sha, "config": gpt_config.to_dict()},
            "sovits": {"file": SOVITS_FILE, "sha256": sovits_sha, "config": sovits_config.to_dict(),
                       "has_posterior": any(k.startswith("enc_q.") for k in sovits_state)},
            "sv": sv_entry,
            "sources": sources or {},
            "hubert": None,
            "bert": None,
            "artifacts": [],
        }
        for key, src in (("hubert", hubert_dir), ("bert", bert_dir)):
            if src is None:
                continue
            src = Path(src)
            if not (src / "config.json").is_file():
                raise BundleError(f"--{key} {src}: not a transformers model folder (no config.json)")
            if copy_models:
                shutil.copytree(src, tmp / key)
                manifest[key] = {"path": key}
            else:
                manifest[key] = {"path": str(src.resolve())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
        for f in (*weight_files, tmp / MANIFEST):
            os.chmod(f, 0o666 & ~umask)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle.open(out)


def replace_dir(staged: Path, live: Path, old: Path | None = None) -> None:
    """Make the finished directory ``staged`` the directory ``live`` (same filesystem).

    A directory cannot be replaced atomically while it exists, so the live one is first renamed to
    ``old`` (default ``.NAME.old-PID`` beside it) and removed after the swap.  Between the two renames
    ``live`` does not exist, while both complete copies do (``old`` and ``staged``): a process killed
    there must be recovered from them (the voice store does so at start; see VoiceStore._recover).
    """
    if live.exists():
        old = old or live.with_name(f".{live.name}.old-{os.getpid()}")
        os.replace(live, old)
        os.replace(staged, live)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, live)


def update_manifest(bundle_path: str | Path, update) -> dict[str, Any]:
    """Apply ``update(manifest) -> None`` and rewrite manifest.json atomically."""
    p = Path(bundle_path) / MANIFEST
    manifest = json.loads(p.read_text("utf-8"))
    update(manifest)
    tmp = p.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    os.replace(tmp, p)
    return manifest
