"""FP16 TensorRT engines built with the tensorrt Python API from the exported FP32 ONNX graphs.

``tensorrt`` is imported inside functions only, so this module imports (and ``gsv-export`` without
``--trt`` runs) on machines without it.  :func:`check_environment` runs before anything is written:
without a CUDA GPU or without tensorrt, ``--trt`` fails with one clear line (exit code 2).

Precision: the network is parsed from the FP32 graph and built with the FP16 flag, but every
normalisation, softmax, reduction and exp/log/pow layer is pinned to FP32 with
OBEY_PRECISION_CONSTRAINTS: FP16 LayerNorm variance and softmax sums are where peers' FP16 engines
overflow into NaN.  Engine IO stays FP32 (the KV cache included), so engines are drop-in for the
FP32 graphs.  Engines are named ``trt/<graph>.fp16.<sm>.trt<version>.plan`` because a plan only
runs on the GPU architecture and TensorRT version that built it; both are recorded in the manifest.

Not run in this repository's CI (no GPU): covered by the ``trt``-marked tests on a GPU machine.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gsv.errors import GsvError

from export.graphs import GRAPHS, trt_shapes

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30  # builder scratch memory limit
# TensorRT layer types kept in FP32 (matched by name so the list survives TensorRT renames)
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
FP32_UNARY_OPS = ("EXP", "LOG", "SQRT", "RECIP")
FP32_ELEMENTWISE_OPS = ("POW",)


@dataclass(frozen=True)
class TrtEnvironment:
    trt_version: str
    gpu_arch: str  # e.g. "sm86"
    gpu_name: str

    def engine_name(self, graph: str, precision: str = "fp16") -> str:
        return f"{graph}.{precision}.{self.gpu_arch}.trt{self.trt_version}.plan"


def check_environment() -> TrtEnvironment:
    """The TensorRT version and GPU architecture, or a GsvError saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise GsvError("--trt needs the tensorrt Python package (pip install tensorrt) and a CUDA GPU; "
                       "tensorrt is not installed") from None
    import torch

    if not torch.cuda.is_available():
        raise GsvError("--trt needs a CUDA GPU; none is visible to torch (CUDA_VISIBLE_DEVICES / driver?)")
    major, minor = torch.cuda.get_device_capability(0)
    return TrtEnvironment(trt.__version__, f"sm{major}{minor}", torch.cuda.get_device_name(0))


def _pin_fp32(network, trt) -> int:
    """Mark precision-sensitive layers FP32; returns how many were pinned."""
    layer_types = {getattr(trt.LayerType, n) for n in FP32_LAYER_TYPES if hasattr(trt.LayerType, n)}
    unary = {getattr(trt.UnaryOperation, n) for n in FP32_UNARY_OPS if hasattr(trt.UnaryOperation, n)}
    elementwise = {getattr(trt.ElementWiseOperation, n) for n in FP32_ELEMENTWISE_OPS
                   if hasattr(trt.ElementWiseOperation, n)}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        keep = layer.type in layer_types
        if layer.type == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer
            keep = layer.op in unary
        elif layer.type == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer
            keep = layer.op in elementwise
        if keep:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype == trt.float32 or layer.get_output(j).dtype == trt.float16:
                    layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def build_engine(onnx_path: Path, plan_path: Path, graph: str, consts: dict, timing_cache: Path) -> dict:
    """Build one FP16 engine with the graph's declared optimisation profile; returns its manifest info."""
    import tensorrt as trt

    spec = GRAPHS[graph]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    pinned = _pin_fp32(network, trt)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    shapes = trt_shapes(spec, consts)
    for name, (lo, opt, hi) in shapes.items():
        if len(lo) == 0:  # 0-d inputs (speed) take no profile
            continue
        profile.set_shape(name, lo, opt, hi)
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if t.is_shape_tensor:  # its values size an output (the vocoder's trim): profile them too
            if t.name not in spec.trt_shape_values:
                raise RuntimeError(f"{graph}: TensorRT treats input {t.name} as a shape tensor; "
                                   "declare its value range in trt_shape_values")
            profile.set_shape_input(t.name, *spec.trt_shape_values[t.name])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build {graph} (see the TensorRT log above)")
    plan_path.write_bytes(bytes(plan))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info("built %s (%d layers pinned to fp32)", plan_path.name, pinned)
    return {"profile": {n: [list(s) for s in v] for n, v in shapes.items()}, "fp32_layers": pinned}
