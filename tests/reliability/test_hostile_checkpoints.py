"""Malicious and damaged checkpoint files: every one is refused with a CheckpointError (one line from
``gsv import``), no pickled code ever runs, and nothing else is raised."""
from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gsv.checkpoint.upstream import load_gpt, load_sovits
from gsv.errors import CheckpointError, GsvError, UnsafeCheckpointError
from tests.core.test_checkpoints import write_tiny


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    gp, sp, _, _ = write_tiny(d)
    return gp.read_bytes(), sp.read_bytes()


def replace_pickle(data: bytes, pkl: bytes) -> bytes:
    """The checkpoint with its data.pkl replaced (a valid zip: CRCs match, so the unpickler sees it)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            z.writestr(info.filename, pkl if info.filename.endswith("data.pkl") else src.read(info.filename))
    return out.getvalue()


def gadget(marker, kind: str) -> bytes:
    """Pickles that would run code when loaded by a plain unpickler (each touches ``marker``)."""
    cmd = f"touch {marker}"
    if kind == "os.system":
        return b"cos\nsystem\n(V" + cmd.encode() + b"\ntR."
    if kind == "posix.system":
        return b"cposix\nsystem\n(V" + cmd.encode() + b"\ntR."
    if kind == "subprocess":
        return b"csubprocess\ncall\n((Vtouch\nV" + str(marker).encode() + b"\nltR."
    if kind == "builtins.exec":
        return b"cbuiltins\nexec\n(Vopen(" + repr(str(marker)).encode() + b", 'w')\ntR."
    if kind == "nested":  # the gadget hidden inside an otherwise normal checkpoint dict
        inner = b"cos\nsystem\n(V" + cmd.encode() + b"\ntR"
        return b"\x80\x02}q\x00(X\x06\x00\x00\x00weightq\x01}q\x02X\x06\x00\x00\x00configq\x03" + inner + b"u."
    if kind == "inst":  # the INST opcode instead of GLOBAL + REDUCE
        return b"(Vtouch " + str(marker).encode() + b"\nios\nsystem\n."
    if kind == "getattr-chain":  # reach os through an allowed-looking module attribute
        return b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V" + cmd.encode() + b"\ntR."
    if kind == "torch.load":  # a nested, unrestricted torch.load of attacker bytes
        return b"ctorch\nload\n(cio\nBytesIO\n(C\x00tRtR."
    raise ValueError(kind)


GADGETS = ["os.system", "posix.system", "subprocess", "builtins.exec", "nested", "inst", "getattr-chain", "torch.load"]


@pytest.mark.parametrize("kind", GADGETS)
@pytest.mark.parametrize("loader", [load_gpt, load_sovits])
def test_malicious_pickles_are_refused_and_never_run(tiny_files, tmp_path, kind, loader):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(replace_pickle(tiny_files[0], gadget(marker, kind)))
    with pytest.raises(CheckpointError) as e:
        loader(path)
    assert not marker.exists()
    assert isinstance(e.value, UnsafeCheckpointError) or "pickle" in str(e.value) or "corrupt" in str(e.value)


def test_gsv_import_of_a_malicious_file_is_one_line(tiny_files, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(replace_pickle(tiny_files[0], gadget(marker, "os.system")))
    sovits = tmp_path / "ok.pth"
    sovits.write_bytes(tiny_files[1])
    r = subprocess.run([sys.executable, "-m", "gsv", "import", "--gpt", str(evil), "--sovits", str(sovits), "--out",
                        str(tmp_path / "b")], capture_output=True, text=True)
    assert r.returncode == 2 and not marker.exists() and not (tmp_path / "b").exists()
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("which", [0, 1])
def test_truncated_checkpoints_at_every_part_of_the_file(tiny_files, tmp_path, which):
    data = tiny_files[which]
    loader = (load_gpt, load_sovits)[which]
    cuts = sorted(set([0, 1, 2, 3, 4, 30, 100, len(data) // 2, len(data) - 22, len(data) - 1]
                      + list(range(0, len(data), max(len(data) // 40, 1)))))
    for n in cuts:
        p = tmp_path / f"cut{n}"
        p.write_bytes(data[:n])
        with pytest.raises(CheckpointError):
            loader(p)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_pickles_give_a_checkpoint_or_a_clean_error(tiny_files, tmp_path, data):
    raw = tiny_files[0]
    pkl = zipfile.ZipFile(io.BytesIO(raw)).read(
        next(n for n in zipfile.ZipFile(io.BytesIO(raw)).namelist() if n.endswith("data.pkl")))
    mutated = bytearray(pkl)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(mutated) - 1))
        op = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if op == "flip":
            mutated[i] ^= data.draw(st.integers(1, 255))
        elif op == "delete":
            del mutated[i: i + data.draw(st.integers(1, 16))]
        else:
            mutated[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        if not mutated:
            mutated = bytearray(b".")
    p = tmp_path / "m.ckpt"
    p.write_bytes(replace_pickle(raw, bytes(mutated)))
    try:
        load_gpt(p)
    except GsvError:
        pass  # refused with a clean error (anything else fails the test)


def test_pickle_protocol_fuzz_never_escapes(tmp_path):
    """Every pickle opcode that builds objects, fed arguments it does not expect."""
    from gsv.checkpoint.torchzip import load_torch_zip

    samples = [pickle.dumps(x, protocol=p) for x in ({"weight": 1}, [1, 2], "s", 2**80, (1,), {1, 2}, b"x", None)
               for p in range(0, 6)]
    samples += [b"\x80\x05\x95\x00\x00\x00\x00\x00\x00\x00\x00.", b"\x8c\x03foo\x94.", b"N\x85R.", b"]\x94(e."]
    for i, pkl in enumerate(samples):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", pkl)
        try:
            load_torch_zip(buf.getvalue())
        except CheckpointError:
            pass


def test_forged_memo_index_is_refused_without_allocating(tiny_files, tmp_path):
    """Found by the mutation fuzz: a LONG_BINPUT index of 1.6e9 made the unpickler allocate ~13 GB
    (MemoryError, or the OOM killer)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    pkl = b"\x80\x02}r\x63\x63\x2e\x5f."  # EMPTY_DICT, LONG_BINPUT 1600086883, STOP
    p = tmp_path / "memo.ckpt"
    p.write_bytes(replace_pickle(tiny_files[0], pkl))
    import re
    from pathlib import Path

    vm = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    limit = vm + 4 * 2**30  # room for the test, far below the 13 GB the forged index asks for
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        with pytest.raises(CheckpointError, match="memo"):
            load_gpt(p)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_zip_bomb_is_refused_before_inflating(tiny_files, tmp_path):
    """A storage entry deflated from 256 MiB of zeros (well under 1 MiB in the file) is refused by its
    declared size, before anything is inflated."""
    src = zipfile.ZipFile(io.BytesIO(tiny_files[0]))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name in src.namelist():
            if not name.endswith("/data/0"):
                z.writestr(name, src.read(name))
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as f:
                chunk = bytes(1 << 20)
                for _ in range(256):
                    f.write(chunk)
    p = tmp_path / "bomb.ckpt"
    p.write_bytes(out.getvalue())
    assert p.stat().st_size < 2 << 20
    with pytest.raises(CheckpointError, match="zip bomb"):
        load_gpt(p)


@pytest.mark.parametrize("damage", ["truncate", "header-length", "header-json", "empty"])
def test_damaged_bundle_weights_are_a_bundle_error(tiny_bundle, tmp_path, damage):
    import shutil
    import struct

    from gsv.checkpoint.bundle import Bundle

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, b)
    f = b / "gpt.safetensors"
    data = f.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "header-length":  # claims an 8 GB JSON header
        data = struct.pack("<Q", 8 << 30) + data[8:]
    elif damage == "header-json":
        data = data[:8] + b"{" * 16 + data[24:]
    else:
        data = b""
    f.write_bytes(data)
    with pytest.raises(GsvError):
        Bundle.open(b).load_gpt()
