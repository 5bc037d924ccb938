"""Python client of the gsv TTS server (sync and asyncio).  Imports grpc and numpy only — never torch."""
from clients.tts_client import AsyncTtsClient, RetryPolicy, StreamResult, TtsClient, TtsError

__all__ = ["AsyncTtsClient", "RetryPolicy", "StreamResult", "TtsClient", "TtsError"]
