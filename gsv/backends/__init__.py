"""Compute backends behind one narrow interface (prefill / decode step / decode audio).

``open_backends(bundle, name)`` returns a (GPTBackend, AudioBackend) pair; the pipeline and the
server only ever talk to those two objects.
"""
from __future__ import annotations

BACKEND_NAMES = ("torch", "onnx", "onnx-int8", "onnx-fp16", "trt")


def open_backends(bundle, name: str = "torch", device: str = "cpu", threads=None, memory=None):
    """(gpt_backend, audio_backend) of ``name`` for an opened :class:`~gsv.checkpoint.bundle.Bundle`.

    ``threads``: CPU threads of the ONNX Runtime graphs, one count for both or a
    :class:`~gsv.backends.base.ThreadPlan` per stage (None = all cores); torch and TensorRT ignore it.
    ``device``: where every backend runs (``trt``: ``cuda``/``cuda:N``; ``cpu`` means the first GPU).
    ``memory``: a :class:`~gsv.backends.base.MemoryPlan` for ONNX Runtime CPU sessions (None: the default).
    """
    from gsv.errors import GsvError

    if name == "torch":
        from gsv.backends.torch_backend import TorchAudioBackend, TorchGPTBackend

        return TorchGPTBackend.from_bundle(bundle, device), TorchAudioBackend.from_bundle(bundle, device)
    if name in ("onnx", "onnx-int8", "onnx-fp16"):
        from gsv.backends.onnx_backend import open_onnx_backends

        return open_onnx_backends(bundle, name, device=device, threads=threads, memory=memory)
    if name == "trt":
        from gsv.backends.trt_backend import open_trt_backends

        return open_trt_backends(bundle, "cuda" if device == "cpu" else device)
    raise GsvError(f"unknown backend {name!r} (choose from {', '.join(BACKEND_NAMES)})")
