"""Reading upstream checkpoint files: formats, versions, and every kind of bad file."""
from __future__ import annotations

import collections
import io
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from gsv.checkpoint.torchzip import load_torch_zip
from gsv.checkpoint.upstream import load_gpt, load_sovits, save_gpt, save_sovits
from gsv.errors import CheckpointError, UnsafeCheckpointError, UnsupportedVersionError
from tests.conftest import tiny_gpt, tiny_sovits

TINY_HPS = {
    "train": {"segment_size": 20480}, "data": {"filter_length": 2048, "hop_length": 640, "win_length": 2048,
                                               "sampling_rate": 32000, "n_mel_channels": 128, "n_speakers": 300},
}


def write_tiny(tmp_path):
    g, s = tiny_gpt(), tiny_sovits()
    gp, sp = tmp_path / "tiny.ckpt", tmp_path / "tiny.pth"
    save_gpt(gp, g.cfg, g.state_dict(), "GPT-e1", extra_config=None)
    hps = dict(TINY_HPS, model=s.cfg.to_upstream_model())
    save_sovits(sp, s.cfg, s.state_dict(), "1epoch_1iteration", hps)
    return gp, sp, g, s


def test_tiny_roundtrip_in_upstream_layout(tmp_path):
    gp, sp, g, s = write_tiny(tmp_path)
    ug = load_gpt(gp)
    assert ug.config.hidden_dim == g.cfg.hidden_dim and ug.version == "v2"
    for k, v in g.state_dict().items():
        torch.testing.assert_close(ug.state_dict[k], v.half().float())
    us = load_sovits(sp)
    assert us.version == "v2" and us.header == "PK" and not us.has_posterior
    # the file stores weight_g/weight_v like upstream; folding gives the weights back (fp16 precision)
    for k, v in s.state_dict().items():
        torch.testing.assert_close(us.state_dict[k], v, atol=2e-3, rtol=2e-3)


def test_written_file_is_plain_torch_zip_with_utils_hparams(tmp_path):
    _, sp, _, _ = write_tiny(tmp_path)
    names = zipfile.ZipFile(sp).namelist()
    assert any(n.endswith("/data.pkl") for n in names) and not names[0].startswith("archive/")
    raw = zipfile.ZipFile(sp).read([n for n in names if n.endswith("data.pkl")][0])
    assert b"utils\nHParams" in raw or b"utils" in raw and b"HParams" in raw
    obj = load_torch_zip(sp.read_bytes())
    assert list(obj.keys()) == ["weight", "config", "info"]
    assert all(v.dtype == torch.float16 for v in obj["weight"].values())
    keys = list(obj["weight"].keys())
    i = keys.index("dec.ups.0.bias")
    assert keys[i + 1 : i + 3] == ["dec.ups.0.weight_g", "dec.ups.0.weight_v"]


@pytest.mark.slow
def test_full_size_fakeckpt_files(fake_ckpts):
    ug = load_gpt(fake_ckpts.get("s1_v2.json"))
    assert ug.version == "v2" and ug.config.n_layer == 24 and ug.info == "GPT-e15"
    us = load_sovits(fake_ckpts.get("s2_v2.json"))
    assert us.version == "v2" and us.config.gin_channels == 512
    full = load_sovits(fake_ckpts.get("s2_v2.json", include_stripped=True))
    assert full.has_posterior and len(full.posterior_keys) == 70  # 103 stored tensors, weight norm folded
    from gsv.models.sovits.model import SoVITS

    SoVITS(full.config, with_posterior=True).load_state_dict(full.state_dict, strict=True)
    assert load_sovits(fake_ckpts.get("s2_v2.json", magic="01")).header == "01"


@pytest.mark.slow
def test_upstream_layout_written_from_fakeckpt_matches(fake_ckpts, tmp_path):
    """Re-saving a fake upstream file with our writer gives the same keys, order, dtypes and values."""
    src = fake_ckpts.get("s2_v2.json")
    original = load_torch_zip(src.read_bytes())
    us = load_sovits(src)
    out = tmp_path / "resaved.pth"
    save_sovits(out, us.config, us.state_dict, us.info, us.raw_config)
    again = load_torch_zip(out.read_bytes())
    assert list(again["weight"].keys()) == list(original["weight"].keys())
    for k, v in original["weight"].items():
        w = again["weight"][k]
        assert w.dtype == torch.float16 and w.shape == v.shape
        if not k.endswith("weight_g"):  # g is recomputed from the folded weight
            torch.testing.assert_close(w.float(), v.float(), atol=1e-3, rtol=1e-3)
    assert again["config"].to_dict() == original["config"].to_dict()


def _with_header(path, header: bytes, tmp_path):
    data = bytearray(path.read_bytes())
    data[:2] = header
    out = tmp_path / f"h{header.decode()}.pth"
    out.write_bytes(bytes(data))
    return out


def test_version_headers(tmp_path):
    _, sp, _, _ = write_tiny(tmp_path)
    assert load_sovits(_with_header(sp, b"01", tmp_path)).version == "v2"
    for header, version in ((b"03", "v3"), (b"04", "v4")):
        with pytest.raises(UnsupportedVersionError, match=version):
            load_sovits(_with_header(sp, header, tmp_path))
    for header, version in ((b"05", "v2Pro"), (b"06", "v2ProPlus")):  # a Pro header on v2 weights
        with pytest.raises(CheckpointError, match=f"says {version} but .* no speaker-verification"):
            load_sovits(_with_header(sp, header, tmp_path))


def test_v1_detected_from_symbol_table_size(tmp_path):
    s = tiny_sovits(version="v1", n_symbols=322, ref_enc_bins=1025)
    sp = tmp_path / "v1.pth"
    save_sovits(sp, s.cfg, s.state_dict(), "x", dict(TINY_HPS, model=s.cfg.to_upstream_model()))
    us = load_sovits(sp)
    assert us.version == "v1" and us.config.ref_enc_bins == 1025


def test_wrong_kind_of_file(tmp_path):
    gp, sp, _, _ = write_tiny(tmp_path)
    with pytest.raises(CheckpointError, match="GPT .* not a SoVITS"):
        load_sovits(gp)
    with pytest.raises(CheckpointError, match="SoVITS .* not a GPT"):
        load_gpt(sp)


@pytest.mark.parametrize("mangle", ["truncated", "garbage", "text", "empty", "directory", "missing"])
def test_broken_files(tmp_path, mangle):
    _, sp, _, _ = write_tiny(tmp_path)
    bad = tmp_path / "bad.pth"
    data = sp.read_bytes()
    if mangle == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif mangle == "garbage":
        bad.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 10)
    elif mangle == "text":
        bad.write_text("hello, I am not a checkpoint\n")
    elif mangle == "empty":
        bad.write_bytes(b"")
    elif mangle == "directory":
        bad.mkdir()
    with pytest.raises(CheckpointError):
        load_sovits(bad)


def _resave(path, edit, tmp_path):
    obj = load_torch_zip(path.read_bytes())
    edit(obj["weight"])
    out = tmp_path / "edited.pth"
    from gsv.checkpoint.torchzip import save_torch_zip

    save_torch_zip(obj, out)
    return out


def test_missing_and_misshaped_tensors(tmp_path):
    _, sp, _, _ = write_tiny(tmp_path)
    out = _resave(sp, lambda w: w.pop("enc_p.proj.bias"), tmp_path)
    with pytest.raises(CheckpointError, match="missing 1 tensors: enc_p.proj.bias"):
        load_sovits(out)
    out = _resave(sp, lambda w: w.__setitem__("enc_p.proj.bias", torch.zeros(3, dtype=torch.float16)), tmp_path)
    with pytest.raises(CheckpointError, match="enc_p.proj.bias has shape"):
        load_sovits(out)


class _Evil:
    def __reduce__(self):
        return (eval, ("1+1",))


def test_pickled_code_is_never_executed(tmp_path):
    buf = io.BytesIO()
    torch.save(collections.OrderedDict(weight={"x": torch.zeros(1)}, config=_Evil(), info=""), buf)
    with pytest.raises(UnsafeCheckpointError, match="eval"):
        load_torch_zip(buf.getvalue())


def test_cli_reports_bad_file_in_one_line(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_text("nope")
    r = subprocess.run([sys.executable, "-m", "gsv", "import", "--gpt", str(bad), "--sovits", str(bad),
                        "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l]
    assert len(lines) == 1 and "Traceback" not in r.stderr and lines[0].startswith("gsv: error:")
