"""A storm of clients that cancel, time out, drop their connection or stop reading mid-request: afterwards
the server holds nothing (no admission slot, GPT row, decode job or session), logged no error, and
serves normally."""
from __future__ import annotations

import asyncio
import random
import threading

import grpc

from clients import TtsClient
from protos.tts.v1 import tts_pb2 as pb
from protos.tts.v1 import tts_pb2_grpc as pb_grpc
import pytest

from tests.reliability.conftest import REF_TEXT, TOKEN, assert_healthy, reference_wav
from tests.server.harness import start_server

TEXT = "你好，欢迎来到北京。今天天气很好。我们去散步吧。"
MD = (("authorization", f"Bearer {TOKEN}"),)
CLIENTS = 48


async def one_client(target: str, i: int, outcomes: dict):
    rng = random.Random(i)
    behaviour = rng.choice(["cancel_stream", "cancel_unary", "deadline", "drop_channel", "bidi_cancel",
                            "bidi_half_open_drop", "complete"])
    config = pb.SynthesisConfig(voice_id="alice", max_audio_seconds=1.0, sampling=pb.SamplingParams(seed=i))
    channel = grpc.aio.insecure_channel(target)
    stub = pb_grpc.TextToSpeechStub(channel)
    try:
        if behaviour in ("cancel_stream", "drop_channel"):
            call = stub.StreamingSynthesize(pb.SynthesizeRequest(config=config, text=TEXT), metadata=MD)
            for _ in range(rng.randint(0, 3)):
                if await call.read() == grpc.aio.EOF:
                    break
            if behaviour == "cancel_stream":
                call.cancel()
            else:
                await channel.close(grace=None)  # the connection goes away under the stream
        elif behaviour == "cancel_unary":
            task = asyncio.ensure_future(stub.Synthesize(pb.SynthesizeRequest(config=config, text=TEXT), metadata=MD))
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            task.cancel()
        elif behaviour == "deadline":
            call = stub.StreamingSynthesize(pb.SynthesizeRequest(config=config, text=TEXT), metadata=MD,
                                            timeout=rng.uniform(0.01, 0.4))
            async for _ in call:
                pass
        elif behaviour.startswith("bidi"):
            async def requests():
                yield pb.BidiSynthesizeRequest(config=config)
                yield pb.BidiSynthesizeRequest(input=pb.TextInput(text=TEXT[:10], flush=True))
                await asyncio.sleep(10)  # never half-closes
            call = stub.BidiSynthesize(requests(), metadata=MD)
            await asyncio.sleep(rng.uniform(0.05, 0.5))
            if behaviour == "bidi_cancel":
                call.cancel()
            else:
                await channel.close(grace=None)
        else:
            async for _ in stub.StreamingSynthesize(pb.SynthesizeRequest(config=config, text=TEXT), metadata=MD):
                pass
        outcomes[behaviour] = outcomes.get(behaviour, 0) + 1
    except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
        code = e.code() if isinstance(e, grpc.aio.AioRpcError) else grpc.StatusCode.CANCELLED
        assert code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.UNAVAILABLE), (behaviour, code)
        outcomes[f"{behaviour}:{code.name}"] = outcomes.get(f"{behaviour}:{code.name}", 0) + 1
    finally:
        await channel.close(grace=None)


@pytest.fixture(scope="module")
def roomy_server(tiny_full_bundle, tmp_path_factory):
    """Room for every storm client (so they are cancelled while generating, not refused at the door)."""
    srv = start_server(tiny_full_bundle.path, tmp_path_factory.mktemp("voices"), tokens={TOKEN: "tester"},
                       max_live=8, max_queue=2 * CLIENTS, max_audio_seconds=2.0)
    with TtsClient(srv.target, token=TOKEN) as c:
        c.register_voice("alice", reference_wav(), REF_TEXT, "zh", consent="ok")
    yield srv
    srv.stop()


def test_disconnect_and_cancel_storm(roomy_server, error_log):
    rel_server = roomy_server
    threads_before = threading.active_count()
    outcomes: dict = {}

    async def storm():
        for wave in range(3):
            await asyncio.gather(*(one_client(rel_server.target, wave * CLIENTS + i, outcomes)
                                   for i in range(CLIENTS)))

    asyncio.run(storm())
    with TtsClient(rel_server.target, token=TOKEN, timeout=60) as c:
        assert_healthy(rel_server, c.channel)
        engine = rel_server.state.engine
        assert not engine.queues and not engine.rows and not engine.waiting
        assert c.stream(TEXT, "alice", max_audio_seconds=0.5, seed=1).summary is not None
    assert not error_log.records, error_log.lines()[:5]
    assert threading.active_count() <= threads_before + 2  # no thread per request left behind
    assert sum(outcomes.values()) == 3 * CLIENTS, outcomes
    print("storm outcomes:", outcomes)


def test_grpc_failed_write_to_a_gone_client_is_not_an_error(error_log):
    """grpc's asyncio server logs a core write that failed because the client disconnected as an ERROR with
    a traceback; the server demotes exactly that record (the storm above must stay free of errors)."""
    import logging

    from server.app import quiet_client_gone_writes

    quiet_client_gone_writes()
    quiet_client_gone_writes()  # idempotent: one filter
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    assert len(grpc_log.filters) == 1
    grpc_log.error("ExecuteBatchError raised in core by servicer method [%s]", "/gsv.tts.v1.TextToSpeech/X")
    assert not error_log.records
    grpc_log.error("Unexpected error in the server core")  # any other grpc error still counts
    assert len(error_log.records) == 1 and error_log.records[0].levelno == logging.ERROR
    error_log.records.clear()
