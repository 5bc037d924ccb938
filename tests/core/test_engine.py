"""The batched engine: streaming vs whole-segment, batching changes nothing, cancel/deadline/limits, open input."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from gsv import constants as C
from gsv.backends.torch_backend import TorchAudioBackend, TorchGPTBackend
from gsv.engine import Engine, EngineObserver
from gsv.sampling import SamplingOptions
from gsv.session import Session, SynthesisOptions, TextSegment
from gsv.streaming import ChunkPolicy
from tests.conftest import tiny_gpt, tiny_sovits


@dataclass
class FakeVoice:
    prompt_phones: list
    prompt_bert: torch.Tensor
    prompt_tokens: torch.Tensor
    ge: torch.Tensor


@pytest.fixture(scope="module")
def backends():
    return TorchGPTBackend(tiny_gpt(seed=5)), TorchAudioBackend(tiny_sovits(seed=5))


def make_voice(seed=0, ty=12):
    g = torch.Generator().manual_seed(seed)
    return FakeVoice(torch.randint(0, 732, (9,), generator=g).tolist(), torch.randn(32, 9, generator=g),
                     torch.randint(0, 1024, (ty,), generator=g), torch.randn(32, 1, generator=g))


def make_segments(seed=0, n=2):
    g = torch.Generator().manual_seed(100 + seed)
    return [TextSegment(f"s{i}", torch.randint(0, 732, (7 + 3 * i,), generator=g).tolist(), torch.zeros(32, 7 + 3 * i))
            for i in range(n)]


def synth(backends, seed=1, streaming=True, max_tokens=30, n_segments=2, deadline_chunks=False, **kw):
    chunks = []
    opts = SynthesisOptions(sampling=SamplingOptions(seed=seed, max_tokens=max_tokens, top_k=5), streaming=streaming, **kw)
    s = Session(f"r{seed}", make_voice(seed), make_segments(seed, n=n_segments), opts, sink=chunks.append)
    eng = Engine(*backends, deadline_chunks=deadline_chunks)
    eng.submit(s)
    eng.run(s)
    return s, chunks


def audio_of(chunks):
    return np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)


def test_streaming_covers_every_sample_once(backends):
    s1, c1 = synth(backends, streaming=True)
    s2, c2 = synth(backends, streaming=False)
    assert s1.finish_reason == s2.finish_reason == "completed"
    assert len(c1) > len(c2)
    assert [c.sequence for c in c1] == list(range(len(c1)))
    starts = np.cumsum([0] + [c.samples.size for c in c1[:-1]])
    assert [c.start_sample for c in c1] == starts.tolist()
    assert audio_of(c1).size == audio_of(c2).size


def test_streaming_with_full_context_equals_whole_decode(backends, monkeypatch):
    import gsv.session as S

    wide = ChunkPolicy(first_chunk_tokens=4, chunk_tokens=6, max_chunk_tokens=8, left_context_tokens=64, lookahead_tokens=64,
                       vocoder_context_tokens=64)
    monkeypatch.setitem(S.LATENCY_POLICIES, "balanced", wide)
    _, c1 = synth(backends, streaming=True, noise_scale=0.5)
    _, c2 = synth(backends, streaming=False, noise_scale=0.5)
    np.testing.assert_allclose(audio_of(c1), audio_of(c2), atol=1e-5)


def test_concurrent_sessions_equal_sequential_runs(backends):
    seeds = [11, 12, 13, 14]
    alone = {sd: audio_of(synth(backends, seed=sd)[1]) for sd in seeds}
    eng = Engine(*backends, max_live=4, max_decode_batch=4)
    outs, sessions = {}, []
    for sd in seeds:
        outs[sd] = []
        opts = SynthesisOptions(sampling=SamplingOptions(seed=sd, max_tokens=30, top_k=5))
        s = Session(f"c{sd}", make_voice(sd), make_segments(sd), opts, sink=outs[sd].append)
        eng.submit(s)
        sessions.append(s)
    while not all(s.done.is_set() for s in sessions):
        eng.ar_step()
        eng.decode_step()
    for sd in seeds:
        np.testing.assert_allclose(audio_of(outs[sd]), alone[sd], atol=2e-5)


def test_cancel_frees_the_row(backends):
    eng = Engine(*backends)
    s = Session("x", make_voice(), make_segments(), SynthesisOptions(sampling=SamplingOptions(seed=1, max_tokens=200)))
    eng.submit(s)
    eng.ar_step()
    eng.ar_step()
    assert eng.live == 1
    eng.cancel(s)
    eng.ar_step()
    assert eng.live == 0 and s.done.is_set() and s.finish_reason == "cancelled"
    assert eng.idle()


def test_deadline_expiry(backends):
    eng = Engine(*backends)
    s = Session("d", make_voice(), make_segments(), SynthesisOptions(sampling=SamplingOptions(seed=1)),
                deadline=time.monotonic() - 1)
    eng.submit(s)
    eng.ar_step()
    assert s.finish_reason == "deadline" and eng.live == 0


def test_max_audio_seconds_caps_generation(backends):
    s, chunks = synth(backends, max_tokens=200, max_audio_seconds=0.5)
    assert s.total_tokens <= 13 and s.finish_reason == "max_audio"


def test_open_input_segments_arrive_later(backends):
    eng = Engine(*backends)
    out = []
    opts = SynthesisOptions(sampling=SamplingOptions(seed=4, max_tokens=20, top_k=5))
    s = Session("b", make_voice(4), [], opts, sink=out.append, input_open=True)
    eng.submit(s)
    assert not eng.ar_step() and not s.done.is_set()
    segs = make_segments(4)
    eng.append_segments(s, segs[:1])
    for _ in range(200):
        eng.ar_step()
        eng.decode_step()
        if s.parked and not eng.pending_decodes():
            break
    assert not s.done.is_set() and out
    eng.append_segments(s, segs[1:], close=True)
    eng.run(s)
    assert s.finish_reason == "completed" and s.seg_index == 1
    assert out[-1].final


class _Recorder(EngineObserver):
    """Observer recording prefill and decoder batch sizes."""

    def __init__(self):
        self.prefills, self.decodes = [], []

    def on_prefill(self, rows, seconds):
        self.prefills.append(rows)

    def on_decode(self, rows, seconds, audio_seconds):
        self.decodes.append(rows)


def test_prefill_position_budget_splits_admission(backends, monkeypatch):
    import gsv.engine as E

    # each test request prefills 9 prompt phones + 7 or 10 segment phones + 12 prompt tokens = 28..31
    monkeypatch.setattr(E, "PREFILL_POSITION_BUDGET", 60)
    rec = _Recorder()
    eng = Engine(*backends, max_live=4, observer=rec)
    sessions = []
    for sd in range(4):
        opts = SynthesisOptions(sampling=SamplingOptions(seed=sd, max_tokens=12, top_k=5))
        s = Session(f"p{sd}", make_voice(sd), make_segments(sd, n=1), opts, sink=lambda c: None)
        eng.submit(s)
        sessions.append(s)
    eng.ar_step()
    assert rec.prefills == [2] and eng.live == 2  # 2 x 28 fits 60, a third would not
    eng.ar_step()
    assert rec.prefills == [2, 2] and eng.live == 4
    # a single request longer than the budget is still admitted alone
    monkeypatch.setattr(E, "PREFILL_POSITION_BUDGET", 1)
    rec2 = _Recorder()
    eng2 = Engine(*backends, max_live=4, observer=rec2)
    for sd in range(2):
        opts = SynthesisOptions(sampling=SamplingOptions(seed=sd, max_tokens=12, top_k=5))
        eng2.submit(Session(f"q{sd}", make_voice(sd), make_segments(sd, n=1), opts, sink=lambda c: None))
    eng2.ar_step()
    eng2.ar_step()
    assert rec2.prefills == [1, 1]


def test_decoder_batches_only_windows_of_similar_length(backends):
    from types import SimpleNamespace

    eng = Engine(*backends, max_decode_batch=4)

    def job(n, speed=1.0):
        return (None, SimpleNamespace(codes=torch.zeros(n), session=SimpleNamespace(options=SimpleNamespace(speed=speed))))

    picked = eng._pick_decode_batch([job(30), job(28), job(10), job(31), job(29), job(30)])
    assert [j.codes.numel() for _, j in picked] == [30, 28, 31, 29]  # the short window would be mostly padding
    assert len(eng._pick_decode_batch([job(10), job(40)])) == 1
    assert len(eng._pick_decode_batch([job(20, speed=1.2), job(20)])) == 1  # speed != 1 decodes alone
    assert [j.codes.numel() for _, j in eng._pick_decode_batch([job(20), job(20, speed=0.8), job(20)])] == [20, 20]
    assert eng._pick_decode_batch([]) == []


def test_assembler_cuts_an_early_window_only_when_urgent():
    from gsv.streaming import SegmentAssembler

    p = ChunkPolicy(first_chunk_tokens=10, chunk_tokens=10, lookahead_tokens=3, min_chunk_tokens=4)
    a = SegmentAssembler(p)
    assert a.next_window(12, False) is None  # 10 + 3 lookahead not there yet
    w = a.next_window(9, False, urgent=True)
    assert (w.start, w.end, w.w1) == (0, 6, 9)  # what is there, lookahead kept
    assert a.next_window(12, False, urgent=True) is None  # 12 - 6 - 3 < 4 tokens: not worth a window
    w = a.next_window(13, False, urgent=True)
    assert (w.start, w.end) == (6, 10)


def test_assembler_floor_holds_back_small_windows_but_not_the_first_or_last():
    from gsv.streaming import SegmentAssembler

    p = ChunkPolicy(first_chunk_tokens=6, chunk_tokens=6, lookahead_tokens=2, min_chunk_tokens=2)
    a = SegmentAssembler(p)
    w = a.next_window(8, False, urgent=True, floor=10)
    assert (w.start, w.end) == (0, 6)  # the first chunk keeps its size
    assert a.next_window(15, False, urgent=True, floor=10) is None  # 7 new tokens < floor
    assert a.next_window(17, False, floor=10) is None  # planned size 6 raised to the floor
    w = a.next_window(18, False, floor=10)
    assert (w.start, w.end) == (6, 16)
    w = a.next_window(19, True, urgent=True, floor=10)  # the segment's last window may be smaller
    assert (w.start, w.end, w.final) == (16, 19, True)


def test_deadline_chunks_keep_every_sample(backends, monkeypatch):
    import gsv.engine as E

    def run(deadline_chunks):
        return synth(backends, seed=3, max_tokens=40, n_segments=1, deadline_chunks=deadline_chunks)

    monkeypatch.setattr(E, "DEADLINE_MARGIN_S", 1e6)  # every listener is always about to run dry
    # cut at min_chunk_tokens whatever the machine's speed (the break-even floor: tests/core/test_pacing.py)
    monkeypatch.setattr(E, "break_even_tokens", lambda *a, **k: 0)
    s1, urgent = run(True)
    s2, planned = run(False)
    assert s1.finish_reason == s2.finish_reason == "completed"
    assert len(urgent) > len(planned)  # shorter chunks were cut as soon as min_chunk_tokens were there
    assert audio_of(urgent).size == audio_of(planned).size
    starts = np.cumsum([0] + [c.samples.size for c in urgent[:-1]])
    assert [c.start_sample for c in urgent] == starts.tolist()


def test_early_windows_are_never_smaller_than_the_break_even_size(backends, monkeypatch):
    """A listener always about to run dry: early windows are cut at the break-even size the engine computes
    (gsv.pacing), not smaller; when no size breaks even (overload) the planned sizes are used."""
    import gsv.engine as E

    monkeypatch.setattr(E, "DEADLINE_MARGIN_S", 1e6)  # every listener is always about to run dry

    def token_counts(floor):
        monkeypatch.setattr(E, "break_even_tokens", lambda *a, **k: floor)
        s, chunks = synth(backends, seed=3, max_tokens=60, n_segments=1, deadline_chunks=True)
        assert s.finish_reason == "completed"
        # chunks between the first and the segment's last carry exactly their window's new tokens
        return [c.samples.size / C.SAMPLES_PER_TOKEN for c in chunks[1:-2]], audio_of(chunks).size

    small, n_small = token_counts(0)
    assert min(small) < 9  # without a floor the urgent cuts are as small as min_chunk_tokens allows
    floored, n_floored = token_counts(9)
    assert floored and min(floored) >= 9
    overload, n_overload = token_counts(None)
    _, planned = synth(backends, seed=3, max_tokens=60, n_segments=1, deadline_chunks=False)
    assert overload == [c.samples.size / C.SAMPLES_PER_TOKEN for c in planned[1:-2]]
    assert n_small == n_floored == n_overload == audio_of(planned).size


def test_vocoder_context_cut_changes_nothing_the_vocoder_reaches(backends, monkeypatch):
    """Vocoding only ``vocoder_context_tokens`` of the decoder's left context gives the audio of vocoding
    all of it (the tiny vocoder reaches < 3 tokens), for less vocoder work."""
    import gsv.session as S

    def run(vc):
        monkeypatch.setitem(S.LATENCY_POLICIES, "balanced", ChunkPolicy(vocoder_context_tokens=vc))
        s, chunks = synth(backends, streaming=True, noise_scale=0.5, max_tokens=60)
        return s, audio_of(chunks)

    s_all, full = run(12)
    s_cut, cut = run(4)
    assert cut.size == full.size
    np.testing.assert_allclose(cut, full, atol=1e-5 * float(np.abs(full).max()))
    assert s_cut.samples_decoded < s_all.samples_decoded
    assert s_cut.samples_decoded / s_cut.samples_out < s_all.samples_decoded / s_all.samples_out


def test_relaxed_windows_are_cut_when_urgent_and_as_large_as_the_tokens_allow():
    from gsv.streaming import SegmentAssembler

    p = ChunkPolicy(first_chunk_tokens=12, lookahead_tokens=3, vocoder_context_tokens=4, max_relaxed_chunk_tokens=60)
    a = SegmentAssembler(p)
    w = a.next_window(15, False, relaxed=True)  # the first chunk keeps its planned size
    assert (w.start, w.end, w.v0, w.w0) == (0, 12, 0, 0)
    assert a.next_window(40, False, relaxed=True) is None  # a buffered listener: no window yet
    w = a.next_window(40, False, urgent=True, relaxed=True)  # now: everything there, lookahead kept
    assert (w.start, w.end, w.w1, w.v0, w.w0) == (12, 37, 40, 8, 0)
    w = a.next_window(100, False, relaxed=True)  # 60 + lookahead available: cut without urgency
    assert (w.start, w.end) == (37, 97)


def test_relaxed_windows_decode_less_per_emitted_second(backends, monkeypatch):
    """With a listener buffer (server mode) windows are fewer and larger: the decoder renders less audio
    twice; every sample is still emitted exactly once."""

    import types

    import gsv.engine as E

    # the engine's clock stands still at 0: every listener has its whole audio ahead of it (a loaded
    # machine must not turn windows urgent or dry and make this depend on timing)
    monkeypatch.setattr(E, "time", types.SimpleNamespace(monotonic=lambda: 0.0, perf_counter=time.perf_counter))

    def run(deadline_chunks):
        return synth(backends, seed=3, max_tokens=80, n_segments=1, deadline_chunks=deadline_chunks)

    s_fixed, fixed = run(False)
    s_relaxed, relaxed = run(True)
    assert audio_of(relaxed).size == audio_of(fixed).size
    assert len(relaxed) < len(fixed)
    assert s_relaxed.samples_decoded < s_fixed.samples_decoded


def test_stream_near_underrun_gets_its_window_before_a_long_buffer(backends):
    """Two streams each with a window waiting and room for one in the decoder call: the one whose
    listener is about to run dry is decoded first, though the other's window was queued first."""
    chunks = {"long": [], "near": []}
    opts = SynthesisOptions(sampling=SamplingOptions(seed=4, max_tokens=80, top_k=5))
    eng = Engine(*backends, max_decode_batch=1)  # fixed chunk sizes: only the order is under test
    long = Session("long", make_voice(4), make_segments(4, n=1), opts, sink=chunks["long"].append)
    near = Session("near", make_voice(4), make_segments(4, n=1), opts, sink=chunks["near"].append)
    eng.submit(long)  # row 0: its windows are created first in every step
    eng.submit(near)
    while not (chunks["long"] and chunks["near"]):  # both past their first audio
        assert eng.ar_step() or eng.decode_step()
        eng.decode_step()
    while eng.pending_decodes():  # start from empty queues
        eng.decode_step()
    now = time.monotonic()
    long.t_first_audio = now + 3.0 - long.samples_out / C.SAMPLE_RATE  # 3 s of audio ahead of its listener
    near.t_first_audio = now + 0.05 - near.samples_out / C.SAMPLE_RATE  # runs dry in 50 ms
    with eng.cv:
        jobs = lambda s: sum(1 for j in eng.queues[s] if hasattr(j, "window"))  # noqa: E731
    while not (jobs(long) and jobs(near)):
        assert eng.ar_step()
    out_long, out_near = long.samples_out, near.samples_out
    eng.decode_step()
    assert near.samples_out > out_near and long.samples_out == out_long


def _queued_window(eng, s) -> bool:
    with eng.cv:
        return any(hasattr(j, "window") for j in eng.queues[s])


def test_gpt_yields_to_a_window_a_listener_waits_for(backends):
    """A stream's first window is pending: the GPT step waits until the decoder (another thread) has
    rendered it; a window whose listener has seconds buffered, or has already run dry, makes no one wait."""
    import threading

    chunks = []
    opts = SynthesisOptions(sampling=SamplingOptions(seed=4, max_tokens=80, top_k=5))
    eng = Engine(*backends, max_decode_batch=1, deadline_chunks=True)
    s = Session("y", make_voice(4), make_segments(4, n=1), opts, sink=chunks.append)
    eng.submit(s)
    while not _queued_window(eng, s):
        assert eng.ar_step()
    assert eng.yield_to_decoder(0.0) is False  # no time to wait: returns at once
    decoder = threading.Thread(target=lambda: (time.sleep(0.05), eng.decode_step()))
    decoder.start()
    assert eng.yield_to_decoder(60.0) is True
    assert chunks and s.samples_out > 0  # it returned because the first audio was rendered
    decoder.join()

    for buffered_s in (-1.0, 30.0):  # seconds ahead of the listener: already dry, and plenty
        while eng.pending_decodes():
            eng.decode_step()
        s.t_first_audio = time.monotonic() + buffered_s - s.samples_out / C.SAMPLE_RATE
        while not _queued_window(eng, s):
            assert eng.ar_step()
        assert eng.yield_to_decoder(60.0) is False


def test_trimmed_vocoder_streams_the_same_audio_for_less_work(backends):
    """The engine asks the vocoder only for the audio each window keeps: the stream is the one an
    untrimmed vocoder gives, and the decoded-audio work it reports (the overhead metric's numerator) is smaller."""
    gpt, audio = backends

    class Work(EngineObserver):
        def __init__(self):
            self.decoded = 0.0

        def on_decode(self, rows, seconds, audio_seconds):
            self.decoded += audio_seconds

    def run(trims: bool):
        be = TorchAudioBackend(audio.model)
        be.trims_vocoder = trims
        work, chunks = Work(), []
        opts = SynthesisOptions(sampling=SamplingOptions(seed=4, max_tokens=80, top_k=5), noise_scale=0.5)
        s = Session("t", make_voice(4), make_segments(4, n=1), opts, sink=chunks.append)
        eng = Engine(gpt, be, observer=work)
        eng.submit(s)
        eng.run(s)
        return audio_of(chunks), work.decoded, s

    plain, plain_work, s_plain = run(False)
    trimmed, trimmed_work, s_trim = run(True)
    assert s_plain.jobs_decoded == s_trim.jobs_decoded > 2
    np.testing.assert_allclose(trimmed, plain, atol=1e-5 * float(np.abs(plain).max()))
    assert trimmed_work < plain_work
    assert trimmed_work >= trimmed.size / C.SAMPLE_RATE  # never less than what was emitted
