"""Load-time server configuration (the only place command-line values become settings)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    bundle: Path
    voices: Path
    port: int = 50051
    host: str = "[::]"
    metrics_port: int | None = None
    backend: str | None = None  # None: ONNX Runtime when the bundle has ONNX graphs, else torch
    device: str = "cpu"
    threads: int | None = None
    max_live: int = 8
    max_queue: int = 16
    max_decode_batch: int = 4
    max_text_chars: int = 2000
    max_audio_seconds: float = 120.0
    max_reference_bytes: int = 4 * 1024 * 1024
    max_buffered_audio_seconds: float = 30.0  # a client this far behind is cut off (it stopped reading)
    bidi_max_buffer_seconds: float = 1.0  # buffered bidi text is synthesized after this long without a sentence end
    drain_grace_seconds: float = 30.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # bearer token -> owner name; empty = no auth
    reflection: bool = True
    retry_after_ms: int = 500

    def __post_init__(self):
        if self.max_live < 1 or self.max_queue < 0:
            raise ValueError("max_live must be >= 1 and max_queue >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
