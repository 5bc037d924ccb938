"""Checkpoint formats: upstream GPT-SoVITS ``.ckpt``/``.pth`` (read and write) and our bundle."""
