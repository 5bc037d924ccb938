"""``gsv-export``: ONNX graphs (FP32, INT8, FP16) and TensorRT engines of a bundle, verified against PyTorch.

Layout: :mod:`export.graphs` (the graph table), :mod:`export.wrappers` (named export modules),
:mod:`export.onnx_export` (writing files), :mod:`export.verify` (parity report),
:mod:`export.trt` (engine builds), :mod:`export.pipeline` (atomic export into a bundle),
:mod:`export.cli` (the command).
"""
