"""SIGKILL during voice writes: whatever moment a process dies, the next start finds every voice
complete (the old or the new version), nothing half-written, and no debris."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import grpc
import pytest

from clients import TtsClient
from gsv.voice import VoiceStore
from tests.reliability.conftest import REF_TEXT, ServerProcess, reference_wav

# A child process that saves voice "v" (versions 1.. n) and dies by SIGKILL at the chosen os.replace
# call of the chosen save: "between" = the first rename of an overwrite done, the second not.
CHILD = r"""
import os, signal, sys, torch
from gsv.voice import Voice, VoiceStore
root, kill_save, kill_rename = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = VoiceStore(root)
real = os.replace
count = {"save": 0, "rename": 0}
def replace(src, dst):
    if count["save"] == kill_save:
        count["rename"] += 1
        if count["rename"] == kill_rename:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
for version in range(1, kill_save + 1):
    count["save"], count["rename"] = version, 0
    v = Voice("v", "en", f"text {version}", [1, 2], torch.full((4, 2), float(version)),
              torch.zeros(3, dtype=torch.long), torch.zeros(4, 1), "bundle", version=version, created=version)
    store.save(v, [b"ref %d" % version], overwrite=True)
"""


def run_child(root, kill_save: int, kill_rename: int) -> int:
    return subprocess.run([sys.executable, "-c", CHILD, str(root), str(kill_save), str(kill_rename)],
                          capture_output=True).returncode


def only_live_folders(root) -> None:
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert not leftovers, leftovers


@pytest.mark.parametrize("kill_rename,expected", [(1, 1), (2, 2)])
def test_crash_during_an_overwrite(tmp_path, kill_rename, expected):
    """Killed at the first rename (live -> old): the old version stays.  Killed between the renames
    (live already moved away, the staged copy not yet in place): the newest complete copy — the new
    version — is restored instead of both copies being deleted."""
    assert run_child(tmp_path, kill_save=2, kill_rename=kill_rename) == -signal.SIGKILL
    assert not (tmp_path / "v").exists() or kill_rename == 1
    store = VoiceStore(tmp_path)  # recovery at start
    only_live_folders(tmp_path)
    voice = store.load("v")
    assert voice.version == expected and voice.ref_text == f"text {expected}"
    assert float(voice.prompt_bert[0, 0]) == expected and store.references("v") == [b"ref %d" % expected]


def test_crash_while_a_new_voice_is_committed(tmp_path):
    """A first save killed at its rename never committed: the voice does not exist afterwards."""
    assert run_child(tmp_path, kill_save=1, kill_rename=1) == -signal.SIGKILL
    store = VoiceStore(tmp_path)
    only_live_folders(tmp_path)
    assert store.ids() == []


def test_random_kills_during_overwrite_churn(tmp_path):
    """SIGKILL at random moments (mid-write, mid-fsync, mid-rename) of a save loop: always a whole voice."""
    loop = CHILD.replace("for version in range(1, kill_save + 1):", "for version in range(1, 10**6):")
    rng = random.Random(12)
    for _ in range(6):
        p = subprocess.Popen([sys.executable, "-c", loop, str(tmp_path), "0", "0"], stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.2, 2.5))  # interpreter + torch start, then dozens of saves
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        store = VoiceStore(tmp_path)
        only_live_folders(tmp_path)
        if store.ids():
            v = store.load("v")
            assert v.ref_text == f"text {v.version}" and float(v.prompt_bert[0, 0]) == v.version
            assert store.references("v") == [b"ref %d" % v.version]
            meta = json.loads((tmp_path / "v" / "voice.json").read_text())
            assert meta["version"] == v.version


def test_server_killed_during_registrations_restarts_with_whole_voices(tiny_full_bundle, tmp_path):
    voices = tmp_path / "voices"
    srv = ServerProcess(tiny_full_bundle.path, voices, tmp_path / "s1.log").wait_serving()
    stop = False
    done = []

    def churn():
        with TtsClient(srv.target, timeout=30) as c:
            i = 0
            while not stop:
                try:
                    c.register_voice(f"v{i % 3}", reference_wav(i % 2), REF_TEXT, "zh", consent="ok", overwrite=True)
                    done.append(i)
                except Exception:  # noqa: BLE001 - the server dies under us
                    return
                i += 1

    import threading

    t = threading.Thread(target=churn)
    t.start()
    deadline = time.monotonic() + 60
    while len(done) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(3).uniform(0.0, 0.3))
    srv.kill()
    stop = True
    t.join(30)
    assert len(done) >= 4
    srv = ServerProcess(tiny_full_bundle.path, voices, tmp_path / "s2.log").wait_serving()
    try:
        only_live_folders(voices)
        with TtsClient(srv.target, timeout=60) as c:
            ids = [v.voice_id for v in c.list_voices()]
            assert set(ids) <= {"v0", "v1", "v2"} and len(ids) >= 1
            for vid in ids:
                assert c.stream("好的。", vid, max_audio_seconds=0.3).chunks
    finally:
        srv.signal()
        assert srv.wait(60) == 0
