"""Audio containers and codecs of the HTTP doors, fed chunk by chunk as the engine produces audio.

=========  ==========================  ============  ===========================================
codec      container                   rate (Hz)     streamed?
=========  ==========================  ============  ===========================================
``pcm``    none (s16le, mono)          as asked      yes
``wav``    RIFF/WAVE PCM16             as asked      yes: header with unknown length (0xFFFFFFFF)
``opus``   Ogg/Opus (libsndfile)       48000         yes: an Ogg page at least every 60 ms
``mp3``    MPEG-1 layer III, CBR       32000         yes (see below)
``flac``   FLAC 16-bit                 32000         no: sent whole when complete
=========  ==========================  ============  ===========================================

Encoders from libsndfile write to a seekable file and, when they close it, go back to patch the
header: FLAC its STREAMINFO (length, checksum), LAME its Xing/Info frame (a silent placeholder
frame first in the file).  A streamed body cannot be patched, so a streamed encoder writes into an
:class:`_AppendOnly` sink that passes on what is appended and drops the late patches: streamed MP3
is constant bit rate (readers then compute the length from the size) and keeps the silent
placeholder frame plus LAME's encoder delay (~70 ms of silence at the start); FLAC without its
STREAMINFO length cannot be read by libsndfile itself, so FLAC is always sent whole.  Complete
(non-streamed) bodies are written to a real in-memory file and are exact.  AAC: libsndfile has no
encoder, so it is refused (:func:`check_available`).
"""
from __future__ import annotations

import io

import numpy as np

from gsv import constants as C
from server.audio_format import FormatError, encode_pcm, wav_container, wav_header

# libsndfile commands (sndfile.h) that python-soundfile does not wrap
SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302
SFC_SET_BITRATE_MODE = 0x1305
SF_BITRATE_MODE_CONSTANT = 0
# Ogg pages are cut at least this often: audio reaches the client at most this late, and each page
# costs ~28 bytes of framing (60 ms: ~4 kbit/s, a tenth of the speech bitrate)
OPUS_PAGE_LATENCY_MS = 60.0
OPUS_RATE = 48000  # Opus runs at 8/12/16/24/48 kHz; 48 kHz is what every decoder outputs

CODECS = ("pcm", "wav", "opus", "mp3", "flac", "aac")
_SNDFILE = {"opus": ("OGG", "OPUS"), "mp3": ("MP3", "MPEG_LAYER_III"), "flac": ("FLAC", "PCM_16")}


def native_rate(codec: str) -> int:
    """The rate a codec is encoded at when the door does not fix one."""
    return OPUS_RATE if codec == "opus" else C.SAMPLE_RATE


def check_available(codec: str) -> None:
    """FormatError (the request's fault: INVALID_ARGUMENT) for a codec this server cannot encode."""
    if codec == "aac":
        raise FormatError("aac output needs an AAC encoder, which this server does not have (libsndfile has "
                          "none); choose mp3, opus, flac, wav or pcm")
    if codec not in CODECS:
        raise FormatError(f"unknown audio format {codec!r}")
    if codec in _SNDFILE:
        import soundfile as sf

        fmt, subtype = _SNDFILE[codec]
        if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
            raise FormatError(f"{codec} output is not available: this libsndfile ({sf.__libsndfile_version__}) "
                              f"cannot write {fmt}/{subtype}")


class Encoder:
    """One request's encoder: ``start()`` once, ``encode(x)`` per chunk of float32 samples at
    ``rate``, ``finish()`` once; each returns the bytes to send now (possibly empty)."""

    heavy = False  # True: real codec work, run it off the event loop

    def __init__(self, rate: int):
        self.rate = rate

    def start(self) -> bytes:
        return b""

    def encode(self, x: np.ndarray) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""


class PcmEncoder(Encoder):
    def encode(self, x):
        return encode_pcm(x, "pcm_s16le")


class WavStreamEncoder(PcmEncoder):
    def start(self):
        return wav_header(self.rate, None)


class WholeWavEncoder(Encoder):
    def __init__(self, rate: int):
        super().__init__(rate)
        self._parts: list[bytes] = []

    def encode(self, x):
        self._parts.append(encode_pcm(x, "pcm_s16le"))
        return b""

    def finish(self):
        return wav_container(b"".join(self._parts), self.rate)


class _AppendOnly(io.RawIOBase):
    """A write-only 'file' for libsndfile that keeps only bytes appended at the end (a stream);
    rewrites of earlier bytes (header patches at close) are dropped."""

    def __init__(self):
        super().__init__()
        self._pos = self._end = 0
        self._new = bytearray()

    def writable(self):
        return True

    def seekable(self):
        return True

    def readable(self):
        return True

    def read(self, n=-1):
        return b""

    def write(self, b) -> int:
        n = len(b)
        if self._pos >= self._end:
            self._new += bytes(b)
        self._pos += n
        self._end = max(self._end, self._pos)
        return n

    def seek(self, offset, whence=0):
        self._pos = offset if whence == 0 else (self._pos + offset if whence == 1 else self._end + offset)
        return self._pos

    def tell(self):
        return self._pos

    def take(self) -> bytes:
        out, self._new = bytes(self._new), bytearray()
        return out


class SndfileEncoder(Encoder):
    """Ogg/Opus, MP3 or FLAC through libsndfile (python-soundfile)."""

    heavy = True

    def __init__(self, codec: str, rate: int, stream: bool):
        import soundfile as sf

        super().__init__(rate)
        self.stream = stream and codec != "flac"
        self._sink = _AppendOnly() if self.stream else io.BytesIO()
        fmt, subtype = _SNDFILE[codec]
        self._file = sf.SoundFile(self._sink, "w", samplerate=rate, channels=1, format=fmt, subtype=subtype)
        if codec == "opus":
            self._command(SFC_SET_OGG_PAGE_LATENCY_MS, "double", OPUS_PAGE_LATENCY_MS)
        elif codec == "mp3" and self.stream:
            self._command(SFC_SET_BITRATE_MODE, "int", SF_BITRATE_MODE_CONSTANT)

    def _command(self, command: int, ctype: str, value) -> None:
        # soundfile exposes no sf_command wrapper for these; its cffi handles are the way in
        import soundfile as sf

        sf._snd.sf_command(self._file._file, command, sf._ffi.new(f"{ctype}*", value), sf._ffi.sizeof(ctype))

    def _out(self) -> bytes:
        return self._sink.take() if self.stream else b""

    def encode(self, x):
        self._file.write(np.clip(np.asarray(x, np.float32), -1.0, 1.0))
        return self._out()

    def finish(self):
        self._file.close()
        return self._sink.take() if self.stream else self._sink.getvalue()


def make_encoder(codec: str, rate: int, stream: bool) -> Encoder:
    """An encoder of ``codec`` at ``rate``; ``stream=False`` gives one exact body at ``finish()``."""
    check_available(codec)
    if codec == "pcm":
        return PcmEncoder(rate)
    if codec == "wav":
        return WavStreamEncoder(rate) if stream else WholeWavEncoder(rate)
    return SndfileEncoder(codec, rate, stream)
