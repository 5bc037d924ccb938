"""gsv-train: fine-tune GPT-SoVITS v2 voices (prepare, SoVITS and GPT stages, bundles).

Importing this package does no work; see :mod:`trainer.cli` for the commands.
"""
