"""``gsv-bench receptive-field``: how far a change of one input moves the outputs of the SoVITS stages.

Streaming decodes windows ``left context | new tokens | lookahead``; the context needed on each side is
the distance over which an input still changes the output.  Measured on a bundle's own weights (PyTorch,
no noise, float64 so float rounding does not hide small effects), for each stage:

* ``decoder``: one semantic token replaced -> the prior mean m_p (text encoder with MRTE; its
  self-attention is global, so the question is how fast the effect decays);
* ``flow``: the latent z_p of one token (2 frames) perturbed -> z after the reverse flow (WaveNet stacks);
* ``vocoder``: z of one token perturbed -> audio (HiFi-GAN convolutions);
* ``end_to_end``: one token replaced -> audio.

For every distance d (in tokens, left and right of the change) the influence is the energy of the
output difference in that token's span relative to the energy at the changed token, in dB, averaged
over ``--trials`` positions and replacement values.  Reported per stage: the curves and the smallest
distance beyond which every influence stays below -40 / -60 dB (``tokens_left`` / ``tokens_right``).
Random (fakeckpt) weights are not trained weights: use a real bundle for the real figure.
"""
from __future__ import annotations

import json
import logging
import math

import torch

from gsv import constants as C

log = logging.getLogger(__name__)

THRESHOLDS_DB = (-40.0, -60.0)


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--tokens", type=int, default=96, help="window length in tokens (the change sits in its middle)")
    p.add_argument("--max-distance", type=int, default=24, help="distances reported, in tokens")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)


def _per_token_energy(x: torch.Tensor, per_token: int) -> torch.Tensor:
    """x [..., T * per_token] -> energy per token [T] (summed over every leading dim)."""
    t = x.shape[-1] // per_token
    return x[..., : t * per_token].reshape(-1, t, per_token).pow(2).sum(dim=(0, 2))


def influence_db(diff: torch.Tensor, ref: torch.Tensor, per_token: int, centre: int, max_d: int) -> dict[str, list]:
    """Energy of ``diff`` d tokens left/right of ``centre`` relative to ``ref``'s energy per token, in dB."""
    e = _per_token_energy(diff, per_token)
    scale = float(_per_token_energy(ref, per_token).mean()) + 1e-30
    out = {"left": [], "right": []}
    for d in range(max_d + 1):
        for side, i in (("left", centre - d), ("right", centre + d)):
            v = float(e[i]) if 0 <= i < e.numel() else 0.0
            out[side].append(10 * math.log10(v / scale + 1e-30))
    return out


def radius(curve: list[float], threshold_db: float) -> int | None:
    """Smallest d such that every influence at distance >= d is below the threshold (None: never)."""
    for d in range(len(curve)):
        if all(v < threshold_db for v in curve[d:]):
            return d
    return None


def _mean_curves(curves: list[dict]) -> dict[str, list[float]]:
    """Average in the energy domain, then back to dB."""
    out = {}
    for side in ("left", "right"):
        rows = torch.tensor([c[side] for c in curves], dtype=torch.float64)
        out[side] = [float(10 * torch.log10(torch.mean(10 ** (col / 10)))) for col in rows.T]
    return out


@torch.no_grad()
def measure(sovits, tokens: int, max_d: int, trials: int, seed: int) -> dict:
    cfg = sovits.cfg
    sovits = sovits.double().eval()
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg.codebook_size, (1, tokens), generator=g)
    phones = torch.randint(0, cfg.n_symbols, (1, max(8, tokens // 2)), generator=g)
    refer = torch.rand(1, cfg.spec_channels, 200, generator=g, dtype=torch.float64)
    sv = 5 * torch.rand(1, cfg.sv_dim, generator=g, dtype=torch.float64) if cfg.is_pro else None
    ge = sovits.speaker_embedding(refer, sv)
    fpt = C.FRAMES_PER_TOKEN
    m_p, _, mask = sovits.prior(codes, phones, ge)
    z = sovits.flow(m_p, mask, g=ge, reverse=True)
    audio = sovits.vocode(z, ge)
    curves: dict[str, list] = {"decoder": [], "flow": [], "vocoder": [], "end_to_end": []}
    for _ in range(trials):
        c = int(torch.randint(tokens // 3, 2 * tokens // 3, (1,), generator=g))
        changed = codes.clone()
        changed[0, c] = (changed[0, c] + 1 + torch.randint(0, cfg.codebook_size - 1, (1,), generator=g)) % cfg.codebook_size
        m2, _, _ = sovits.prior(changed, phones, ge)
        curves["decoder"].append(influence_db(m2 - m_p, m_p, fpt, c, max_d))
        z2 = sovits.flow(m2, mask, g=ge, reverse=True)
        curves["end_to_end"].append(influence_db(sovits.vocode(z2, ge) - audio, audio, C.SAMPLES_PER_TOKEN, c, max_d))
        zp = m_p.clone()
        zp[:, :, c * fpt : (c + 1) * fpt] += torch.randn(zp.shape[1], fpt, generator=g, dtype=torch.float64)
        curves["flow"].append(influence_db(sovits.flow(zp, mask, g=ge, reverse=True) - z, z, fpt, c, max_d))
        zz = z.clone()
        zz[:, :, c * fpt : (c + 1) * fpt] += torch.randn(zz.shape[1], fpt, generator=g, dtype=torch.float64)
        curves["vocoder"].append(influence_db(sovits.vocode(zz, ge) - audio, audio, C.SAMPLES_PER_TOKEN, c, max_d))
    out = {}
    for stage, cs in curves.items():
        mean = _mean_curves(cs)
        out[stage] = {"influence_db": mean}
        for th in THRESHOLDS_DB:
            out[stage][f"tokens_left_below_{int(-th)}db"] = radius(mean["left"], th)
            out[stage][f"tokens_right_below_{int(-th)}db"] = radius(mean["right"], th)
    return out


def run(args) -> int:
    from gsv.checkpoint.bundle import Bundle

    bundle = Bundle.open(args.bundle)
    result = {"bundle": str(bundle.path), "model_version": bundle.model_version,
              "weights": (bundle.manifest.get("sources") or {}).get("kind", "unknown"),
              "settings": {k: getattr(args, k) for k in ("tokens", "max_distance", "trials", "seed")},
              "stages": measure(bundle.load_sovits(), args.tokens, args.max_distance, args.trials, args.seed)}
    text = json.dumps(result, indent=2)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    summary = {s: {k: v for k, v in r.items() if k != "influence_db"} for s, r in result["stages"].items()}
    print(json.dumps(summary, indent=2))
    return 0
