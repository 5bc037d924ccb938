"""Property-based fuzz of every RPC's request fields: bad input never gets UNKNOWN/INTERNAL (or any
fault code), no error is logged, and the server is healthy and holds nothing after every case.

Fields are drawn from the values a careless or hostile client sends: out-of-range and non-finite
numbers, unknown enum values, empty/blank/huge/control-character/emoji/RTL strings, invalid voice
ids, broken audio, oversized and wrong bearer tokens, and raw request bytes that do not parse
(invalid UTF-8, truncation, garbage).  Valid requests are drawn too (they must succeed or be refused
cleanly).  Every RPC sent is counted; the suite sends at least MIN_REQUESTS per run.
"""
from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.tts.v1 import tts_pb2 as pb
from tests.conftest import speechlike, wav_bytes
from tests.reliability.conftest import (FAULT_CODES, REF_TEXT, TOKEN, assert_healthy, raw_bidi, raw_stream,
                                        raw_unary, reference_wav)

MIN_REQUESTS = 2000
SENT = {"requests": 0}
CODES: dict[str, int] = {}  # outcome counts (printed at the end: the fuzz must also reach success paths)

# --------------------------------------------------------------------------------------- strategies
NOT_SURROGATE = st.characters(blacklist_categories=("Cs",))
SENTENCES = ["你好，欢迎来到北京。", "今天天气很好。", "Hello there, friend.", "我们在北京。Hello!", "好的。",
             "第1名：3.5元，100%！", "こんにちは。", "안녕하세요.", "。。。", "！？", "a", "1234567890"]
WEIRD = ["", " ", "\n\n\t", "\u200b", "\u202e\u202d", "\x00\x01\x7f", "😀" * 5, "\ufeff你好", "a\u0301" * 10,
         "\U000e0041", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ﷺ", "\r\n" * 20, "\\x00", "' OR 1=1 --", "../../etc/passwd", "%s%n%x"]


def texts(max_size: int = 400):
    return st.one_of(st.sampled_from(SENTENCES), st.sampled_from(WEIRD), st.text(NOT_SURROGATE, max_size=40),
                     st.text(NOT_SURROGATE, min_size=280, max_size=max_size),
                     st.builds(lambda a, b: a + b, st.sampled_from(SENTENCES), st.text(NOT_SURROGATE, max_size=20)))


def short_strings():
    return st.one_of(st.just(""), st.sampled_from(WEIRD), st.text(NOT_SURROGATE, max_size=24),
                     st.text(st.characters(codec="ascii"), min_size=1000, max_size=20000))


def voice_ids(existing: str | None = "alice"):
    valid = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
    options = [valid, short_strings(), st.sampled_from(["nl\n", "alice\n", " alice", "a" * 65, "-x", ".hidden",
                                                        "_owners", "a/b", "..", "ALICE"])]
    if existing:
        options.insert(0, st.just(existing))
    return st.one_of(*options)


def mostly(valid, fuzz, weight: int = 6):
    """``valid`` values ``weight`` times as often as ``fuzz`` ones, so whole requests are often valid."""
    return st.integers(0, weight).flatmap(lambda i: fuzz if i == 0 else valid)


def languages():
    return st.one_of(st.sampled_from(["", "zh", "en", "ja", "ko", "yue", "auto", "all_zh", "all_ja", "auto_yue",
                                      "ZH", "zh-CN", "xx"]), short_strings())


def floats():
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(-3.0, 3.0, width=32),
                     st.sampled_from([0.0, -0.0, 1.0, 0.5, 2.0, 1e-45, 3.4e38]))


def ints32():
    return st.one_of(st.integers(-2**31, 2**31 - 1), st.integers(-2, 1100))


VALID_LANGUAGE = st.sampled_from(["", "", "zh", "auto", "all_zh", "en"])


@st.composite
def synthesis_configs(draw, streaming: bool = False):
    c = pb.SynthesisConfig(voice_id=draw(mostly(st.just("alice"), voice_ids(), 6)),
                           language=draw(mostly(VALID_LANGUAGE, languages())),
                           request_id=draw(mostly(st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                                          max_size=32), short_strings())),
                           latency_mode=draw(mostly(st.integers(0, 3), st.integers(-3, 6))),
                           text_split=draw(mostly(st.integers(0, 6), st.integers(-3, 9))))
    c.output.encoding = draw(mostly(st.integers(0, 2 if streaming else 3), st.integers(-2, 6)))
    c.output.sample_rate_hz = draw(mostly(st.sampled_from([0, 8000, 16000, 22050, 24000, 32000, 44100, 48000]),
                                          ints32(), 4))
    for name, valid, fuzz in (("temperature", st.floats(0.125, 2.0, width=32), floats()),
                              ("top_p", st.floats(0.25, 1.0, width=32), floats()),
                              ("repetition_penalty", st.floats(1.0, 2.0, width=32), floats()),
                              ("top_k", st.integers(1, 100), ints32()),
                              ("seed", st.integers(0, 2**63 - 1), st.integers(-2**63, 2**63 - 1))):
        if draw(st.booleans()):
            setattr(c.sampling, name, draw(mostly(valid, fuzz, 5)))
    if draw(st.booleans()):
        c.speed = draw(mostly(st.floats(0.5, 2.0, width=32), floats()))
    # mostly short audio: valid requests then finish fast on the tiny model
    c.max_audio_seconds = draw(mostly(st.floats(0.0625, 0.5, width=32), floats(), 5))
    return c


def sane(c: pb.SynthesisConfig) -> pb.SynthesisConfig:
    """The same config with the numbers that make a request expensive kept small (fuzz stays fast)."""
    c = pb.SynthesisConfig.FromString(c.SerializeToString())
    if c.HasField("max_audio_seconds") and math.isfinite(c.max_audio_seconds) and c.max_audio_seconds > 0.6:
        c.max_audio_seconds = 0.6
    return c


@st.composite
def audio_bytes(draw):
    kind = draw(st.sampled_from(["valid", "valid", "garbage", "empty", "short", "silent", "header", "truncated"]))
    x, sr = speechlike(seconds=3.5, seed=draw(st.integers(0, 3)))
    if kind == "valid":
        return wav_bytes(x, sr)
    if kind == "garbage":
        return draw(st.binary(max_size=2000))
    if kind == "empty":
        return b""
    if kind == "short":
        return wav_bytes(x[: sr // 2], sr)
    if kind == "silent":
        return wav_bytes(np.zeros_like(x), sr)
    if kind == "header":
        return b"RIFF\xff\xff\xff\x7fWAVEfmt " + draw(st.binary(max_size=64))
    data = wav_bytes(x, sr)
    return data[: draw(st.integers(0, len(data) - 1))]


def metadata():
    good = (("authorization", f"Bearer {TOKEN}"),)
    return mostly(st.just(good), st.one_of(st.just(()),
                     st.builds(lambda t: (("authorization", f"Bearer {t}"),),
                               st.one_of(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
                                         st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=5000,
                                                 max_size=30000))),
                     st.just((("authorization", "Basic dXNlcjpwdw=="),)), st.just((("authorization", "Bearer"),))), 8)


FUZZ = settings(max_examples=250, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


# --------------------------------------------------------------------------------------- checking
def outcome(fn) -> grpc.StatusCode:
    SENT["requests"] += 1
    try:
        fn()
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
    CODES[code.name] = CODES.get(code.name, 0) + 1
    return code


def check(server, channel, code, error_log, what) -> None:
    assert code not in FAULT_CODES, f"{what}: {code}"
    assert not error_log.records, f"{what}: errors logged: {error_log.lines()[:3]}"
    assert_healthy(server, channel)


@pytest.fixture()
def stub(client):
    return client.stub


# --------------------------------------------------------------------------------------- the fuzz
@FUZZ
@given(config=synthesis_configs(), text=mostly(st.sampled_from(SENTENCES), texts()), md=metadata())
def test_fuzz_synthesize(rel_server, client, error_log, config, text, md):
    code = outcome(lambda: client.stub.Synthesize(pb.SynthesizeRequest(config=sane(config), text=text),
                                                  metadata=md, timeout=60))
    check(rel_server, client.channel, code, error_log, f"Synthesize {config} {text!r}")


@FUZZ
@given(config=synthesis_configs(streaming=True), text=mostly(st.sampled_from(SENTENCES), texts()), md=metadata(),
       read=st.integers(0, 4))
def test_fuzz_streaming_synthesize(rel_server, client, error_log, config, text, md, read):
    def call():
        it = client.stub.StreamingSynthesize(pb.SynthesizeRequest(config=sane(config), text=text), metadata=md,
                                             timeout=60)
        if read == 0:  # read the first message only, then hang up
            next(iter(it), None)
            it.cancel()
        else:
            list(it)

    code = outcome(call)
    if code == grpc.StatusCode.CANCELLED and read == 0:
        code = grpc.StatusCode.OK  # our own cancel
    check(rel_server, client.channel, code, error_log, f"StreamingSynthesize {config} {text!r}")


@st.composite
def bidi_messages(draw):
    msgs = []
    if draw(st.integers(0, 9)):  # usually a config first
        msgs.append(pb.BidiSynthesizeRequest(config=sane(draw(synthesis_configs(streaming=True)))))
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 12)) == 0:
            msgs.append(pb.BidiSynthesizeRequest(config=pb.SynthesisConfig(voice_id="alice")))
        elif draw(st.integers(0, 15)) == 0:
            msgs.append(pb.BidiSynthesizeRequest())  # neither oneof member
        else:
            msgs.append(pb.BidiSynthesizeRequest(input=pb.TextInput(text=draw(mostly(st.sampled_from(SENTENCES),
                                                                                     texts(max_size=320))),
                                                                    flush=draw(st.booleans()))))
    return msgs


@FUZZ
@given(msgs=bidi_messages(), md=metadata())
def test_fuzz_bidi_synthesize(rel_server, client, error_log, msgs, md):
    code = outcome(lambda: list(client.stub.BidiSynthesize(iter(msgs), metadata=md, timeout=60)))
    check(rel_server, client.channel, code, error_log, f"BidiSynthesize {msgs}")


@FUZZ
@given(vid=mostly(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), voice_ids(existing=None)), audio=audio_bytes(), aux=st.lists(audio_bytes(), max_size=2),
       text=mostly(st.sampled_from([REF_TEXT, "Hello there, friend."]), texts()),
       lang=mostly(st.sampled_from(["zh", "en", "auto"]), languages()),
       name=mostly(st.text(NOT_SURROGATE, max_size=30), short_strings()),
       consent=mostly(st.just("the speaker agreed"), short_strings()),
       overwrite=st.booleans(), md=metadata())
def test_fuzz_register_voice(rel_server, client, error_log, vid, audio, aux, text, lang, name, consent, overwrite, md):
    req = pb.RegisterVoiceRequest(voice_id=vid, reference_audio=audio, aux_reference_audio=aux, reference_text=text,
                                  reference_language=lang, display_name=name, consent_statement=consent,
                                  overwrite=overwrite)
    code = outcome(lambda: client.stub.RegisterVoice(req, metadata=md, timeout=60))
    check(rel_server, client.channel, code, error_log, f"RegisterVoice {vid!r} {text!r} {lang!r}")


@FUZZ
@given(vid=voice_ids(), md=metadata())
def test_fuzz_get_voice(rel_server, client, error_log, vid, md):
    code = outcome(lambda: client.stub.GetVoice(pb.GetVoiceRequest(voice_id=vid), metadata=md, timeout=30))
    check(rel_server, client.channel, code, error_log, f"GetVoice {vid!r}")


@FUZZ
@given(size=ints32(), token=st.one_of(st.sampled_from(["", "0", "1", "2", "-3", "+1", "1e3", " 1", "01", "99999999999"]),
                                      short_strings()), lang=languages(), md=metadata())
def test_fuzz_list_voices(rel_server, client, error_log, size, token, lang, md):
    req = pb.ListVoicesRequest(page_size=size, page_token=token, language=lang)
    code = outcome(lambda: client.stub.ListVoices(req, metadata=md, timeout=30))
    check(rel_server, client.channel, code, error_log, f"ListVoices {size} {token!r}")


@FUZZ
@given(vid=voice_ids(existing=None), md=metadata())
def test_fuzz_delete_voice(rel_server, client, error_log, vid, md):
    code = outcome(lambda: client.stub.DeleteVoice(pb.DeleteVoiceRequest(voice_id=vid), metadata=md, timeout=30))
    check(rel_server, client.channel, code, error_log, f"DeleteVoice {vid!r}")


@settings(FUZZ, max_examples=100)
@given(md=metadata())
def test_fuzz_get_server_config(rel_server, client, error_log, md):
    code = outcome(lambda: client.stub.GetServerConfig(pb.GetServerConfigRequest(), metadata=md, timeout=30))
    check(rel_server, client.channel, code, error_log, "GetServerConfig")


METHODS = ["Synthesize", "StreamingSynthesize", "BidiSynthesize", "RegisterVoice", "GetVoice", "ListVoices",
           "DeleteVoice", "GetServerConfig"]


@st.composite
def broken_bytes(draw):
    """Serialized requests made invalid: invalid UTF-8 in a string field, truncation, flipped bytes, garbage."""
    method = draw(st.sampled_from(METHODS))
    text_field = "我们在北京。".encode()
    base = {
        "Synthesize": pb.SynthesizeRequest(config=pb.SynthesisConfig(voice_id="alice", max_audio_seconds=0.3),
                                           text="我们在北京。"),
        "BidiSynthesize": pb.BidiSynthesizeRequest(input=pb.TextInput(text="我们在北京。")),
        "RegisterVoice": pb.RegisterVoiceRequest(voice_id="fz", reference_text="我们在北京。", consent_statement="ok"),
        "GetVoice": pb.GetVoiceRequest(voice_id="alice"),
        "ListVoices": pb.ListVoicesRequest(page_token="1", language="zh"),
        "DeleteVoice": pb.DeleteVoiceRequest(voice_id="nobody"),
        "GetServerConfig": pb.GetServerConfigRequest(),
    }[method if method != "StreamingSynthesize" else "Synthesize"].SerializeToString()
    kind = draw(st.sampled_from(["utf8", "utf8", "truncate", "flip", "garbage"]))
    if kind == "utf8" and text_field in base:
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]))
        data = base.replace(text_field, bad + text_field[len(bad):])
    elif kind == "utf8" or kind == "truncate":
        data = base[: draw(st.integers(0, max(len(base) - 1, 0)))]
    elif kind == "flip":
        data = bytearray(base or b"\x00")
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        data = bytes(data)
    else:
        data = draw(st.binary(max_size=300))
    return method, data


@settings(FUZZ, max_examples=400)
@given(case=broken_bytes())
def test_fuzz_undecodable_requests(rel_server, client, error_log, case):
    method, data = case
    md = (("authorization", f"Bearer {TOKEN}"),)
    ch = client.channel
    if method == "StreamingSynthesize":
        code = outcome(lambda: list(raw_stream(ch, method)(data, metadata=md, timeout=30)))
    elif method == "BidiSynthesize":
        first = pb.BidiSynthesizeRequest(config=pb.SynthesisConfig(voice_id="alice", max_audio_seconds=0.3))
        code = outcome(lambda: list(raw_bidi(ch)(iter([first.SerializeToString(), data]), metadata=md, timeout=30)))
    else:
        code = outcome(lambda: raw_unary(ch, method)(data, metadata=md, timeout=30))
    check(rel_server, client.channel, code, error_log, f"{method} {data!r}")


def test_fuzz_volume_and_no_faults_counted(rel_server):
    """Runs after the fuzz tests above (file order): enough requests, and none counted as a fault."""
    if SENT["requests"] < 100:
        pytest.skip("run the whole file to check the fuzz volume")
    assert SENT["requests"] >= MIN_REQUESTS, SENT
    reg = rel_server.state.metrics.registry
    for method in METHODS:
        for code in ("UNKNOWN", "INTERNAL"):
            assert not reg.get_sample_value("tts_requests_total", {"method": method, "code": code}), (method, code)
    assert CODES.get("OK", 0) >= MIN_REQUESTS // 20, CODES  # valid requests are drawn too
    print(f"fuzz: {SENT['requests']} generated requests, 0 faults; outcomes {CODES}")
