"""Bundle round trip, manifest, atomic writes and bad bundles."""
from __future__ import annotations

import json

import pytest
import torch

from gsv.checkpoint import bundle as B
from gsv.errors import BundleError
from tests.conftest import make_tiny_bundle, tiny_gpt, tiny_sovits


def test_roundtrip(tmp_path):
    b = make_tiny_bundle(tmp_path / "b")
    assert b.manifest["format_version"] == B.FORMAT_VERSION and b.symbol_version == "v2" and b.sample_rate == 32000
    g, s = tiny_gpt(0), tiny_sovits(0)
    for k, v in g.state_dict().items():
        torch.testing.assert_close(b.load_gpt().state_dict()[k], v)
    for k, v in s.state_dict().items():
        torch.testing.assert_close(b.load_sovits().state_dict()[k], v)
    again = B.Bundle.open(tmp_path / "b")
    assert again.bundle_id == b.bundle_id and again.gpt_config == g.cfg and again.sovits_config == s.cfg


def test_refuses_existing_output_unless_forced(tmp_path):
    make_tiny_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="already exists"):
        make_tiny_bundle(tmp_path / "b")
    b2 = make_tiny_bundle(tmp_path / "b", seed=1, force=True)
    assert B.Bundle.open(tmp_path / "b").bundle_id == b2.bundle_id


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(B, "sha256_file", boom)
    with pytest.raises(KeyboardInterrupt):
        make_tiny_bundle(tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_bad_bundles(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        B.Bundle.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a bundle"):
        B.Bundle.open(tmp_path / "empty")
    b = make_tiny_bundle(tmp_path / "b")
    m = json.loads((b.path / "manifest.json").read_text())
    m["format_version"] = 99
    (b.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format version 99"):
        B.Bundle.open(b.path)
    b = make_tiny_bundle(tmp_path / "c")
    (b.path / "gpt.safetensors").unlink()
    with pytest.raises(BundleError, match="incomplete"):
        B.Bundle.open(b.path)
    b = make_tiny_bundle(tmp_path / "d")
    (b.path / "sovits.safetensors").write_bytes(b"broken")
    with pytest.raises(BundleError, match="corrupt"):
        B.Bundle.open(b.path).load_sovits()


def test_mismatched_versions_refused(tmp_path):
    g = tiny_gpt()
    s = tiny_sovits(version="v1", n_symbols=322, ref_enc_bins=1025)
    with pytest.raises(BundleError, match="different GPT-SoVITS versions"):
        B.write_bundle(tmp_path / "x", g.cfg, g.state_dict(), s.cfg, s.state_dict())


@pytest.mark.parametrize("version", ["v2", "v2ProPlus"])
def test_reference_only_sovits_prepares_the_same_voice_with_a_fraction_of_the_weights(tmp_path, version):
    b = make_tiny_bundle(tmp_path / "b", version=version)
    full, ref = b.load_sovits(), b.load_sovits(reference_only=True)
    assert not hasattr(ref, "dec") and not hasattr(ref, "enc_p") and not hasattr(ref, "flow")
    assert sum(p.numel() for p in ref.parameters()) < sum(p.numel() for p in full.parameters())
    g = torch.Generator().manual_seed(0)
    ssl = torch.randn(1, full.cfg.ssl_dim, 40, generator=g)
    spec = torch.randn(1, 1025, 60, generator=g).abs()
    sv = torch.randn(1, full.cfg.sv_dim, generator=g) if full.cfg.is_pro else None
    with torch.no_grad():
        assert torch.equal(ref.extract_latent(ssl), full.extract_latent(ssl))
        ge = full.speaker_embedding(spec, sv)
        torch.testing.assert_close(ref.speaker_embedding(spec, sv), ge, rtol=0, atol=0)
        if full.cfg.is_pro:
            torch.testing.assert_close(ref.text_condition(ge), full.text_condition(ge), rtol=0, atol=0)
