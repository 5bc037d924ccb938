"""Trimmed vocoder rendering: only the audio a streaming window keeps is rendered, and it is the
audio an untrimmed rendering gives (the cuts stay outside what the later layers reach)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gsv.backends.base import vocoder_rows
from gsv.backends.torch_backend import TorchAudioBackend
from gsv.models.config import SoVITSConfig
from gsv.models.sovits.vocoder import Generator, TrimPlan
from tests.conftest import tiny_sovits


def _generator(cfg: SoVITSConfig, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    g = Generator(cfg.inter_channels, cfg.resblock, cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes,
                  cfg.upsample_rates, cfg.upsample_initial_channel, cfg.upsample_kernel_sizes, cfg.gin_channels)
    for p in g.parameters():  # larger than the default init, so every layer's reach shows in the output
        p.data.normal_(0.0, 0.1)
    return g.eval()


@pytest.fixture(scope="module")
def full_generator():
    return _generator(SoVITSConfig())


@pytest.mark.parametrize("trim", [(6, 6), (1, 0), (0, 1), (3, 9), (12, 0), (20, 21)])
def test_trimmed_rendering_equals_the_untrimmed_audio_it_keeps(full_generator, trim):
    g = full_generator
    frames = 44  # a balanced-mode window: 4 context + 15 new + 3 lookahead tokens
    x = torch.randn(2, 192, frames, generator=torch.Generator().manual_seed(1))
    ge = 0.1 * torch.randn(2, 512, 1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = g(x, ge)[:, 0]
        kept = g(x, ge, trim=trim)[:, 0]
    hop = g.hop
    assert kept.shape == (2, (frames - trim[0] - trim[1]) * hop)
    ref = whole[:, trim[0] * hop : (frames - trim[1]) * hop]
    assert float((kept - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_a_cut_inside_the_receptive_field_would_change_the_audio(full_generator):
    """The radii are not loose by accident: cutting a frame more at the input than the plan allows
    changes the kept samples (the test above would catch a plan that cuts too much)."""
    g = full_generator
    x = torch.randn(1, 192, 44, generator=torch.Generator().manual_seed(3))
    ge = torch.zeros(1, 512, 1)
    trim = g.trim_plan.input_radius + 2
    with torch.no_grad():
        ref = g(x, ge)[:, 0, trim * g.hop :]
        # what the vocoder gives when the input itself is cut right at the kept span
        cut_at_span = g(x[:, :, trim:], ge)[:, 0]
    assert float((cut_at_span - ref).abs().max()) > 1e-3 * float(ref.abs().max())


def test_masked_rows_decode_as_if_alone(full_generator):
    """A row shifted right inside a batch (valid from frame 3) and trimmed gives its audio alone."""
    g = full_generator
    x = torch.randn(2, 192, 40, generator=torch.Generator().manual_seed(4))
    x[1, :, :3] = 0.0
    x[1, :, 36:] = 0.0
    ge = 0.1 * torch.randn(2, 512, 1, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        batch = g(x, ge, torch.tensor([40, 36]), torch.tensor([0, 3]), trim=(8, 6))[:, 0]
        alone = g(x[1:, :, 3:36], ge[1:])[0, 0]
    hop = g.hop
    ref = alone[(8 - 3) * hop : (36 - 6 - 3) * hop]  # frames 8..34 of the batch = 5..31 of the row alone
    got = batch[1, : ref.numel()]
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_work_counts_what_the_trim_skips():
    plan = TrimPlan.of(SoVITSConfig())
    assert plan.work(44, (0, 0)) == pytest.approx(44.0)
    balanced = plan.work(44, (6, 6))  # keeps 32 frames: the stages after the first skip most of the rest
    assert 32.0 < balanced < 40.0
    assert plan.work(44, (12, 12)) < balanced
    # the first stage's reach (10 frames) is wider than a 6-frame trim: it renders all 44
    assert plan.cut(0, 6) == 0 and plan.cut(1, 6) > 0


def test_backend_keep_spans_render_each_rows_audio_exactly():
    """decode_audio with per-row vocoded starts and kept spans (a first window with nothing before its
    kept span beside mid-segment ones): the kept samples equal an untrimmed decode, the rest is zero."""
    be = TorchAudioBackend(tiny_sovits(seed=7))
    gen = torch.Generator().manual_seed(8)
    codes = torch.randint(0, 1024, (3, 22), generator=gen)
    code_lens = torch.tensor([22, 15, 19])
    phones = torch.randint(0, 732, (3, 10), generator=gen)
    phone_lens = torch.tensor([10, 8, 9])
    ge = torch.randn(3, be.config.gin_channels, 1, generator=gen)
    noise = 0.5 * torch.randn(3, be.config.inter_channels, 44, generator=gen)
    vocode_from = torch.tensor([0, 5, 8])
    keep = torch.tensor([[0, 12], [3, 7], [3, 8]])  # tokens from each row's vocoded start
    full = be.decode_audio(codes, code_lens, phones, phone_lens, ge, noise, 1.0, vocode_from)
    kept = be.decode_audio(codes, code_lens, phones, phone_lens, ge, noise, 1.0, vocode_from, keep)
    assert kept.shape == full.shape
    spt = 2 * be.config.hop_length
    for b, (k0, k1) in enumerate(keep.tolist()):
        torch.testing.assert_close(kept[b, k0 * spt : k1 * spt], full[b, k0 * spt : k1 * spt], atol=1e-5, rtol=1e-4)
        assert float(kept[b, : k0 * spt].abs().sum()) == 0.0 and float(kept[b, k1 * spt :].abs().sum()) == 0.0


def test_vocoder_rows_line_up_the_kept_spans():
    z = torch.arange(2 * 1 * 10, dtype=torch.float32).view(2, 1, 10) + 1
    rows = vocoder_rows(z, torch.tensor([10, 8]), torch.tensor([0, 2]), torch.tensor([[0, 6], [4, 6]]))
    assert rows.trim[0] == 4  # the latest kept start
    assert rows.valid_from.tolist() == [4, 0] and rows.valid_to.tolist() == [14, 6]
    np.testing.assert_array_equal(rows.z[1, 0, :6].numpy(), z[1, 0, 2:8].numpy())
    assert rows.trim == (4, 14 - 10)  # the right edge: row 0 keeps up to aligned frame 10
    with pytest.raises(ValueError):
        vocoder_rows(z, torch.tensor([10, 8]), None, torch.tensor([[0, 11], [0, 8]]))
