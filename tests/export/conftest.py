"""Exported bundles shared by the export tests (each export runs once per session)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def clone_bundle(src: Path, dst: Path) -> Path:
    """A writable copy of a bundle; weights are hard-linked (exports never modify them in place)."""
    shutil.copytree(src, dst, copy_function=_link)
    return dst


def _link(a, b):
    try:
        os.link(a, b)
    except OSError:
        shutil.copy2(a, b)


@pytest.fixture(scope="session")
def exported_tiny(tiny_bundle, tmp_path_factory):
    """The tiny bundle exported at fp32, int8 and fp16, verified (treat as read-only)."""
    from export.pipeline import ExportOptions, export_bundle

    path = clone_bundle(tiny_bundle.path, tmp_path_factory.mktemp("export") / "tiny")
    export_bundle(path, ExportOptions(precisions=("fp32", "int8", "fp16"), threads=2, progress=False))
    return path


@pytest.fixture(scope="session")
def exported_full(full_bundle, tmp_path_factory):
    """The full-size fakeckpt bundle exported once at fp32 + int8, verified (treat as read-only)."""
    from export.pipeline import ExportOptions, export_bundle

    path = clone_bundle(full_bundle.path, tmp_path_factory.mktemp("export") / "full")
    export_bundle(path, ExportOptions(precisions=("fp32", "int8"), threads=2, progress=False))
    return path
