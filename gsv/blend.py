"""Voice blending, and carrying a voice to another model.

A **blend** is a new voice made from 2-4 voices prepared for the same bundle, with weights
(normalised to sum 1):

* the timbre conditioning is interpolated by weight: ``ge = sum(w_i * ge_i)``.  ge is what the
  decoder and vocoder read: for v2 the reference-encoder embedding; for v2Pro/v2ProPlus the vector
  that combines the reference encoder with the speaker-verification embedding of each reference
  (``PReLU(ref_enc + sv_emb(sv))``, averaged over the references).  The speaker-verification
  embeddings themselves are interpolated too (``sv = sum(w_i * mean(sv_i))``, kept with the voice).
  Interpolating the vector the model consumes keeps a weight-1.0 blend identical to its source and
  makes a 50/50 blend the exact midpoint of what the decoder hears; mixing the two embeddings before
  the Pro model's PReLU instead would move even a one-source blend of a multi-reference voice.
* the prompt (reference semantic tokens, transcript phones and BERT features, text, language) is
  the heaviest source's (ties: the first listed), or none at all — reference-free synthesis — when
  asked: a prompt is one real recording and cannot be averaged.

A blended voice keeps copies of its sources' reference audio, grouped per source with the weights
(``blend`` in its ``voice.json``), so it stands alone when a source is deleted and can be prepared
for another model like any voice (:func:`rederive`): each group's timbre is computed with that
model, then mixed with the same weights.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from gsv.errors import VoiceError
from gsv.voice import Voice, validate_voice_id

MIN_SOURCES, MAX_SOURCES = 2, 4


def normalise_weights(weights: list[float]) -> list[float]:
    """Weights >= 0 (finite, not all zero) -> weights summing to 1 (VoiceError otherwise)."""
    if not MIN_SOURCES <= len(weights) <= MAX_SOURCES:
        raise VoiceError(f"a blend takes {MIN_SOURCES} to {MAX_SOURCES} source voices, got {len(weights)}")
    for w in weights:
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise VoiceError(f"blend weights must be finite numbers >= 0, got {w!r}")
    total = float(sum(weights))
    if total <= 0:
        raise VoiceError("blend weights must not all be 0")
    return [float(w) / total for w in weights]


def mix(parts: list[tuple[torch.Tensor, torch.Tensor | None]], weights: list[float]):
    """Weighted timbre: (sum w_i ge_i, sum w_i mean(sv_i) [1, sv_dim] or None) of (ge [gin, 1], sv [n, sv_dim])."""
    ge = sum(float(w) * g.float() for (g, _), w in zip(parts, weights))
    svs = [s for _, s in parts]
    if any(s is None for s in svs):
        if any(s is not None for s in svs):
            raise VoiceError("cannot blend voices with and without speaker-verification embeddings")
        return ge, None
    sv = sum(float(w) * s.float().mean(0, keepdim=True) for s, w in zip(svs, weights))
    return ge, sv


def blend_voices(voice_id: str, sources: list[tuple[Voice, float]], *, reference_free: bool = False,
                 owner: str = "", consent: str = "") -> Voice:
    """A new voice from ``sources`` (voices prepared for one bundle, with weights); see the module doc."""
    validate_voice_id(voice_id)
    weights = normalise_weights([w for _, w in sources])
    voices = [v for v, _ in sources]
    ids = [v.voice_id for v in voices]
    if len(set(ids)) != len(ids):
        raise VoiceError("a blend names each source voice once")
    if voice_id in ids:
        raise VoiceError(f"a blend cannot replace one of its sources ({voice_id!r})")
    families = {v.family for v in voices}
    if len(families) > 1:
        raise VoiceError(f"cannot blend voices of incompatible versions ({', '.join(sorted(families))} phone sets)")
    if len({v.bundle_id for v in voices}) > 1:
        raise VoiceError("the sources were prepared for different models; their timbre embeddings live in different "
                         "spaces (prepare them for one model first)")
    if len({tuple(v.ge.shape) for v in voices}) > 1:
        raise VoiceError("the sources' timbre embeddings have different sizes (incompatible versions)")
    ge, sv = mix([(v.ge, v.sv_emb) for v in voices], weights)
    heaviest = voices[max(range(len(voices)), key=lambda i: (weights[i], -i))]
    prompt = dict(prompt_phones=list(heaviest.prompt_phones), prompt_bert=heaviest.prompt_bert,
                  prompt_tokens=heaviest.prompt_tokens, ref_text=heaviest.ref_text, norm_text=heaviest.norm_text)
    if reference_free:
        prompt = dict(prompt_phones=[], prompt_bert=heaviest.prompt_bert[:, :0], prompt_tokens=torch.zeros(0, dtype=torch.long),
                      ref_text="", norm_text="")
    return Voice(voice_id=voice_id, language=heaviest.language, ge=ge, bundle_id=heaviest.bundle_id, owner=owner,
                 consent=consent, created=time.time(), n_aux_refs=0, sv_emb=sv, model_version=heaviest.model_version,
                 symbol_version=heaviest.symbol_version, prompt_space=heaviest.prompt_space, **prompt)


def recipe(sources: list[tuple[Voice, float, int]], reference_free: bool) -> dict:
    """The ``blend`` entry of a blended voice's metadata: per source (voice, weight, count of its
    reference files, which are stored in this order), the indices of its files, and the prompt source."""
    weights = normalise_weights([w for _, w, _ in sources])
    out, first = [], 0
    for (v, _, n), w in zip(sources, weights):
        out.append({"voice_id": v.voice_id, "weight": w, "references": list(range(first, first + n))})
        first += n
    heaviest = max(range(len(out)), key=lambda i: (weights[i], -i))
    return {"sources": out, "prompt": None if reference_free else out[heaviest]["voice_id"]}


def timbre_groups(meta: dict, n_references: int) -> list[tuple[list[int], float]]:
    """(reference file indices, weight) of each timbre source of a stored voice: one group of all its
    ``n_references`` files for a registered voice, one per source for a blend."""
    blend = meta.get("blend")
    if not blend:
        return [(list(range(n_references)), 1.0)]
    return [(list(s["references"]), float(s["weight"])) for s in blend["sources"]]


def prompt_reference(meta: dict) -> int | None:
    """Index of the reference file the voice's prompt was made from (None: reference-free by request)."""
    blend = meta.get("blend")
    if not blend:
        return 0
    for s in blend["sources"]:
        if s["voice_id"] == blend.get("prompt"):
            return s["references"][0]
    return None


def rederive(preparer, of: Voice, meta: dict, references: list[bytes], keep_prompt: bool) -> Voice:
    """The stored voice ``of`` (its metadata and reference files) prepared for ``preparer``'s bundle.

    The timbre is always computed with the new model (per group, mixed with the blend weights); the
    prompt is kept when ``keep_prompt`` (same phone table, BERT, HuBERT, SSL projection and quantizer:
    the prompt tokens mean the same) and recomputed from the prompt's reference otherwise."""
    groups = timbre_groups(meta, len(references))
    if not references or any(not idx or max(idx) >= len(references) for idx, _ in groups):
        raise VoiceError(f"voice {of.voice_id!r} has no stored reference audio to prepare it for another model")
    parts = [preparer.timbre([references[i] for i in idx]) for idx, _ in groups]
    if len(parts) == 1:  # a registered voice: exactly what prepare() gives (per-reference embeddings)
        ge, sv = parts[0]
    else:
        ge, sv = mix(parts, [w for _, w in groups])
    bundle = preparer.bundle
    voice = dataclasses.replace(of, ge=ge, sv_emb=sv, bundle_id=bundle.bundle_id, model_version=bundle.model_version,
                                symbol_version=bundle.symbol_version)
    prompt_ref = prompt_reference(meta)
    if keep_prompt or prompt_ref is None:
        return voice
    voice = dataclasses.replace(voice, prompt_space=bundle.prompt_space())
    if preparer.hubert is None:
        return dataclasses.replace(voice, prompt_phones=[], prompt_bert=torch.zeros(bundle.gpt_config.bert_dim, 0),
                                   prompt_tokens=torch.zeros(0, dtype=torch.long), norm_text="")
    prompt, bert = preparer.text.prompt(of.ref_text, of.language)
    return dataclasses.replace(voice, prompt_phones=list(prompt.ids), prompt_bert=bert, norm_text=prompt.norm_text,
                               prompt_tokens=preparer.prompt_tokens(references[prompt_ref]))
