"""A couple of steps of each stage from full-size fake upstream checkpoints (the kit's fakeckpt files)."""
from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from tests.conftest import KIT
from tests.trainer.conftest import tiny_cfg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_base(fake_ckpts, tmp_path_factory):
    """Bundles of the fake v2 files: with the posterior encoder (pretrained layout) and without (a fine-tune)."""
    from gsv.checkpoint.bundle import write_bundle
    from gsv.checkpoint.upstream import load_gpt, load_sovits
    from trainer.init_base import write_random_hubert

    root = tmp_path_factory.mktemp("fullbase")
    hub = write_random_hubert(root / "hubert", 768, layers=1)
    g = load_gpt(fake_ckpts.get("s1_v2.json"))
    out = {}
    for tag, stripped in (("pretrained", True), ("finetune", False)):
        s = load_sovits(fake_ckpts.get("s2_v2.json", include_stripped=stripped))
        assert s.has_posterior == stripped
        out[tag] = write_bundle(root / tag, g.config, g.state_dict, s.config, s.state_dict, hubert_dir=hub,
                                sources={"kind": "fakeckpt"})
    return out


@pytest.fixture(scope="module")
def full_exp(full_base, syn_data, tmp_path_factory):
    from trainer.prepare import prepare

    lst = tmp_path_factory.mktemp("fl") / "four.list"
    lst.write_text("\n".join(syn_data.read_text().splitlines()[:4]) + "\n")
    out = tmp_path_factory.mktemp("fullexp") / "exp"
    s = prepare(lst, out, full_base["pretrained"].path, progress=False)
    assert len(s.items) == 4
    return out


def _upstream_load(path):
    """What upstream's loaders do: torch.load(weights_only=False) with GPT_SoVITS/ on sys.path (utils.HParams)."""
    fake = types.ModuleType("utils")
    fake.HParams = type("HParams", (), {"__module__": "utils"})
    saved = sys.modules.get("utils")
    sys.modules["utils"] = fake
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    finally:
        if saved is None:
            sys.modules.pop("utils", None)
        else:
            sys.modules["utils"] = saved


def _manifest(name):
    return json.loads((KIT / name).read_text())


def test_full_size_sovits_steps_in_upstream_layout(full_exp, full_base, tmp_path):
    import shutil

    from trainer.checkpointing import load_weights
    from trainer.run import train

    exp = tmp_path / "exp"
    shutil.copytree(full_exp, exp)
    r = train("sovits", exp, tiny_cfg("sovits", max_steps=2, batch_size=2, val_fraction=0.0))
    assert r.progress.global_step == 2
    assert all(math.isfinite(v) for row in r.train_log for v in row.values())
    before, after = full_base["pretrained"].sovits_state_dict(), load_weights(exp / "train/sovits/last.safetensors")
    assert not torch.equal(before["dec.conv_pre.weight"], after["dec.conv_pre.weight"])
    assert not torch.equal(before["enc_q.proj.weight"], after["enc_q.proj.weight"])
    obj = _upstream_load(exp / "weights/sovits-last.pth")
    man = _manifest("s2_v2.json")
    assert list(obj) == ["weight", "config", "info"] and type(obj["config"]).__module__ == "utils"
    assert {k: list(v.shape) for k, v in obj["weight"].items()} == {t["key"]: t["shape"] for t in man["tensors"]}
    assert all(v.dtype == torch.float16 for v in obj["weight"].values())
    hps = obj["config"]
    assert hps.model.upsample_rates == [10, 8, 2, 2, 2] and hps.data.filter_length == 2048
    assert hps.train.segment_size == 20480 and obj["info"] == "1epoch_2iteration"


def test_full_size_sovits_without_posterior_and_upstream_discriminator(full_exp, full_base, tmp_path):
    import shutil

    from gsv.checkpoint.torchzip import save_torch_zip
    from gsv.checkpoint.upstream import unfold_weight_norm
    from gsv.models.weightnorm import folded_state_dict
    from trainer.checkpointing import load_state, load_weights
    from trainer.config import DiscriminatorConfig
    from trainer.discriminator import build_discriminator
    from trainer.run import train

    torch.manual_seed(7)
    d = build_discriminator(DiscriminatorConfig())
    sd = folded_state_dict(d)
    d_file = tmp_path / "s2D_fake.pth"
    save_torch_zip({"weight": unfold_weight_norm(sd, {k[:-7] for k in sd if k.endswith(".weight")})}, d_file)
    exp = tmp_path / "exp"
    shutil.copytree(full_exp, exp)
    cfg = tiny_cfg("sovits", max_steps=1, batch_size=1, val_fraction=0.0, base_discriminator=str(d_file))
    r = train("sovits", exp, cfg, base=full_base["finetune"].path)
    assert r.progress.global_step == 1
    after = load_weights(exp / "train/sovits/last.safetensors")
    assert any(k.startswith("enc_q.") for k in after)  # a fresh posterior encoder, as upstream
    st = load_state(exp / "train/sovits/state-last.pt")
    d_after = st["models"]["d"]
    key = "discriminators.1.convs.0.parametrizations.weight.original1"
    assert d_after[key].shape == sd["discriminators.1.convs.0.weight"].shape
    assert (d_after[key] - sd["discriminators.1.convs.0.weight"]).abs().max() < 1e-2  # started from the file


def test_full_size_gpt_steps_in_upstream_layout(full_exp, full_base, tmp_path):
    import shutil

    from gsv.checkpoint.bundle import Bundle
    from trainer.checkpointing import load_weights
    from trainer.run import make_bundle, train

    exp = tmp_path / "exp"
    shutil.copytree(full_exp, exp)
    r = train("gpt", exp, tiny_cfg("gpt", max_steps=2, batch_size=2, val_fraction=0.0, dpo=True))
    assert r.progress.global_step == 2 and all(math.isfinite(row["loss/dpo"]) for row in r.train_log)
    before, after = full_base["pretrained"].gpt_state_dict(), load_weights(exp / "train/gpt/last.safetensors")
    assert not torch.equal(before["h.layers.0.linear1.weight"], after["h.layers.0.linear1.weight"])
    obj = _upstream_load(exp / "weights/gpt-last.ckpt")
    man = _manifest("s1_v2.json")
    assert list(obj) == ["weight", "config", "info"] and obj["info"] == "GPT-e1"
    assert {k: list(v.shape) for k, v in obj["weight"].items()} == {t["key"]: t["shape"] for t in man["tensors"]}
    assert obj["config"]["model"] == man["config"]["model"] | {"dropout": 0}
    assert obj["config"]["data"]["max_sec"] == 54
    b = make_bundle(exp, tmp_path / "voice")
    assert Bundle.open(b.path).gpt_config == full_base["pretrained"].gpt_config
