"""Weight norm for training: a switch on the inference modules, not a second model definition.

Upstream trains the SoVITS vocoder and flows with (old-style) weight norm on the modules named by
:func:`gsv.checkpoint.upstream.weight_norm_module_names`; inference modules here hold plain
weights.  :func:`apply_weight_norm` re-parametrizes those modules in place with
``torch.nn.utils.parametrizations.weight_norm`` (dim 0, the same split ``w = g * v / ||v||``) and
:func:`folded_state_dict` gives back plain ``X.weight`` keys, so a trained model saves exactly like
an inference model.  ``load_unfolded`` accepts upstream's ``weight_g``/``weight_v`` pairs so a file
that still has them (e.g. a pretrained discriminator) keeps its exact (g, v) split.
"""
from __future__ import annotations

import collections

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

_G = ".parametrizations.weight.original0"
_V = ".parametrizations.weight.original1"


def magnitude(v: torch.Tensor) -> torch.Tensor:
    """||v|| over every dim but 0, shaped to broadcast against v: weight norm's ``g`` of a plain weight."""
    return v.reshape(v.shape[0], -1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def fold(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The plain weight of a weight-normed (g, v) pair: ``g * v / ||v||`` (dim 0, as upstream)."""
    return g * v / magnitude(v)


def apply_weight_norm(model: nn.Module, names) -> list[str]:
    """Parametrize ``model.<name>.weight`` for every name in ``names``; returns the names applied."""
    done = []
    for name in sorted(names):
        module = model.get_submodule(name)
        if not parametrize.is_parametrized(module, "weight"):
            weight_norm(module, name="weight", dim=0)
        done.append(name)
    return done


def weight_normed_modules(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if parametrize.is_parametrized(m, "weight")]


@torch.no_grad()
def folded_state_dict(model: nn.Module) -> "collections.OrderedDict[str, torch.Tensor]":
    """The state dict with every weight-norm parametrization folded to a plain ``X.weight``
    (in the position of ``original0``; detached copies)."""
    raw = model.state_dict()
    out: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    for k, v in raw.items():
        if k.endswith(_V):
            continue
        if k.endswith(_G):
            base = k[: -len(_G)]
            out[base + ".weight"] = fold(v, raw[base + _V]).detach().clone()
        else:
            out[k] = v.detach().clone()
    return out


@torch.no_grad()
def load_unfolded(model: nn.Module, sd: dict[str, torch.Tensor], strict: bool = True):
    """Load a state dict whose weight-normed modules are given either folded (``X.weight``) or as
    upstream's ``X.weight_g``/``X.weight_v`` into a model with weight-norm parametrizations."""
    params = {n for n in weight_normed_modules(model)}
    mapped: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith(".weight_g") and k[: -len(".weight_g")] in params:
            mapped[k[: -len(".weight_g")] + _G] = v
        elif k.endswith(".weight_v") and k[: -len(".weight_v")] in params:
            mapped[k[: -len(".weight_v")] + _V] = v
        elif k.endswith(".weight") and k[: -len(".weight")] in params:
            base = k[: -len(".weight")]
            mapped[base + _G] = magnitude(v)
            mapped[base + _V] = v
        else:
            mapped[k] = v
    return model.load_state_dict(mapped, strict=strict)
