"""A short soak (``gsv-bench soak``, 60 s) inside the suite: mixed traffic and voice churn, zero errors.

Only errors are asserted: memory growth and latency drift are benchmark figures (benchmarks/results/).
"""
from __future__ import annotations

import json

from benchmarks.cli import main
from clients import TtsClient
from tests.reliability.conftest import REF_TEXT, free_port, reference_wav
from tests.server.harness import start_server


def test_one_minute_soak_has_no_errors(tiny_full_bundle, tmp_path, error_log):
    srv = start_server(tiny_full_bundle.path, tmp_path / "voices", metrics_port=free_port(), max_live=4,
                       max_queue=8)
    try:
        with TtsClient(srv.target) as c:
            c.register_voice("bench", reference_wav(), REF_TEXT, "zh", consent="ok")
        out = tmp_path / "soak.json"
        assert main(["soak", "--server", srv.target, "--minutes", "1", "--concurrency", "3", "--max-audio-seconds",
                     "2", "--window-seconds", "15", "--warmup-minutes", "0.25", "--drift-minutes", "0.25",
                     "--sample-seconds", "2", "--metrics", f"http://localhost:{srv.config.metrics_port}/metrics",
                     "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        totals = result["totals"]
        assert totals["errors"] == 0, totals["errors_by_code"]
        assert all(totals["by_kind"][k] > 0 for k in ("stream", "unary", "bidi", "cancel", "churn")), totals
        assert totals["rss_mb_end"] and len(result["windows"]) >= 4
        assert [v.voice_id for v in TtsClient(srv.target).list_voices()] == ["bench"]  # churn cleaned up
    finally:
        srv.stop()
    assert not error_log.records, error_log.lines()[:5]
