"""gRPC streaming TTS server (``gsv-serve``): continuous batching engine, voices, Prometheus metrics."""
