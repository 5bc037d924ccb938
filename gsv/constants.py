"""Acoustic and token-rate constants of GPT-SoVITS v1/v2, in one place.

Every derived value is computed here; other modules import these names instead of repeating
numbers.  Rates: HuBERT features at 50 Hz, semantic tokens at 25 Hz, SoVITS latent frames at
50 Hz, 32 kHz output audio.
"""
from __future__ import annotations


def exact_div(x: int, y: int) -> int:
    assert x % y == 0, (x, y)
    return x // y


SAMPLE_RATE = 32000  # SoVITS output and reference-spectrogram rate
SSL_SAMPLE_RATE = 16000  # HuBERT input rate
N_FFT = 2048  # linear spectrogram (reference encoder, training)
WIN_LENGTH = 2048
HOP_LENGTH = 640  # samples per latent frame at 32 kHz -> 50 Hz
SPEC_CHANNELS = N_FFT // 2 + 1  # 1025 linear bins
N_MELS = 128  # mel loss of SoVITS training
REF_ENC_BINS_V2 = 704  # v2 reference encoder sees only the lowest 704 linear bins
SPEC_EPS = 1e-8  # inside the magnitude sqrt, as upstream's spectrogram_torch
FRAMES_PER_TOKEN = 2  # 25 Hz tokens are repeated x2 (nearest) to the 50 Hz latent
SAMPLES_PER_FRAME = HOP_LENGTH  # the HiFi-GAN generator upsamples by prod(upsample_rates) = 640
SAMPLES_PER_TOKEN = FRAMES_PER_TOKEN * SAMPLES_PER_FRAME  # 1280 samples = 40 ms
TOKENS_PER_SECOND = exact_div(SAMPLE_RATE, SAMPLES_PER_TOKEN)  # 25
SSL_FRAMES_PER_TOKEN = 2  # ssl_proj is Conv1d(k=2, s=2): 50 Hz HuBERT -> 25 Hz

# Reference audio as upstream's TTS accepts it for the prompt tokens (3-10 s at 16 kHz).
REF_MIN_SECONDS = 3.0
REF_MAX_SECONDS = 10.0
# Upstream appends int(0.3 * 32000) zeros to the 16 kHz reference before HuBERT (a quirk: the
# SoVITS rate is used on 16 kHz audio, so this is 0.6 s of silence).
REF_SSL_TAIL_PADDING = int(0.3 * SAMPLE_RATE)  # 9600 samples at 16 kHz
# Training audio peak rule and the HuBERT input scale of upstream's 2-get-hubert-wav32k.py.
HUBERT_INPUT_SCALE = 1145.14
MAX_WAV_VALUE = 32768.0

# GPT (text-to-semantic)
SEMANTIC_VOCAB = 1024  # codebook size; token 1024 is EOS
EOS_TOKEN = 1024
MIN_TOKENS_BEFORE_EOS = 11  # EOS is banned for the first 11 decoding steps (0.44 s)
MAX_TOKENS_PER_SEGMENT = 1500  # upstream's hard loop cap (60 s)
MUTE_TOKEN = 486  # the semantic token upstream uses as "silence-like" for streaming splits
BERT_DIM = 1024
SSL_DIM = 768

# Speaker verification (v2Pro/v2ProPlus): ERes2NetV2 over Kaldi-style log-mel filterbanks of 16 kHz
# audio, resampled from the 32 kHz reference as upstream does (torchaudio Resample(32000, 16000)).
SV_SAMPLE_RATE = 16000
SV_FRAME_LENGTH = 400  # 25 ms window
SV_FRAME_SHIFT = 160  # 10 ms hop
SV_N_FFT = 512  # the window rounded up to a power of two
SV_N_MELS = 80
SV_MEL_LOW_HZ = 20.0
SV_PREEMPHASIS = 0.97
SV_POVEY_POWER = 0.85  # Kaldi's "povey" window = Hann ** 0.85
SV_EMBEDDING_DIM = 20480  # full-size ERes2NetV2 (w24 s4 e4): 2048 channels x 10 mel rows, time-averaged
