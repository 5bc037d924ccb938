"""GPT-SoVITS v1/v2 model definitions (PyTorch)."""
