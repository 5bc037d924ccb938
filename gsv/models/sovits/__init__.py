"""SoVITS v1/v2 (upstream ``SynthesizerTrn``): semantic tokens + phones + reference -> 32 kHz audio."""
