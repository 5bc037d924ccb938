"""Both stages under torchrun: 2 CPU processes on the gloo backend."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _torchrun(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trainer", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(Path(__file__).resolve().parents[2]))


@pytest.mark.parametrize("stage", ["sovits", "gpt"])
def test_ddp_two_process_step_on_gloo(exp_copy, stage):
    from trainer.checkpointing import load_state, load_weights

    extra = ["--grad-accum", "2"] if stage == "gpt" else []
    r = _torchrun([stage, "--exp", str(exp_copy), "--epochs", "1", "--max-steps", "2", "--batch-size", "2",
                   "--device", "cpu", "--no-synth", "--threads", "1", "--log-every", "1", *extra])
    assert r.returncode == 0, "\n".join(ln for ln in r.stderr.splitlines() if "/s]" not in ln)[-3000:]
    st = load_state(exp_copy / f"train/{stage}/state-last.pt")
    assert st["world_size"] == 2 and len(st["rng"]) == 2 and st["progress"]["global_step"] == 2
    assert not torch.equal(st["rng"][0]["torch"], st["rng"][1]["torch"])  # each rank its own random stream
    w = load_weights(exp_copy / f"train/{stage}/last.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values())
    assert "done: 2 steps" in r.stdout
