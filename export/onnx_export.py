"""Writing the ONNX files: FP32 export of a wrapper, INT8 dynamic quantisation, FP16 conversion.

Every function writes exactly one file at the path it is given (the caller's temporary
directory); nothing here knows about bundles or manifests.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch

from export.graphs import GRAPHS, OPSET, dynamic_axes, input_names, output_names
from export.wrappers import TRACE_SIZES, ExportModels, build_wrapper, sample_inputs

log = logging.getLogger(__name__)

# Ops kept in FP32 by the FP16 conversion.  Peers' FP16 engines produce NaN exactly here:
# LayerNorm's variance and softmax's sum overflow fp16 (max 65504) on long or loud inputs; exp/log/pow
# and reductions lose most of their precision or overflow; Range/Cast/shape maths must stay exact.
FP16_KEEP_FP32_OPS = (
    "LayerNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2",
    "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Softplus", "Range", "Cast", "CumSum",
)
# Ops whose constant weights INT8 dynamic quantisation replaces (int8 weights, uint8 activations
# quantised on the fly per tensor: no calibration data needed).  Weights are quantised per tensor:
# ORT's fused DynamicQuantizeMatMul only takes its fast u8s8 path for a scalar weight scale (per
# channel measured ~2x slower on this CPU, slower than FP32 at batch 1).  Block-wise 8-bit
# MatMulNBits (block 32 / 128) was measured too: 10-15% slower at batch 1 and no better greedy
# agreement (teacher-forced 97.7% vs 97.0% over 6 x 50 steps, disagreements only at near-ties).
INT8_OPS = ("MatMul", "Gemm")
# Graph outputs whose producing MatMul/Gemm stays FP32: the logits layer (1 of 97 decode matmuls,
# 0.7% of the weights) feeds the sampler directly, and its rounding is what flips near-tie argmaxes.
INT8_KEEP_FP32_OUTPUTS = ("logits",)


def export_fp32(graph: str, path: Path, consts: dict, models: ExportModels) -> None:
    """Trace the wrapper of ``graph`` and write an FP32 ONNX file (weights inline)."""
    spec = GRAPHS[graph]
    wrapper = build_wrapper(graph, models)
    gen = torch.Generator().manual_seed(0)
    args = sample_inputs(graph, TRACE_SIZES, models, gen)
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about every Python int it sees; the dynamic-length verification is what
        # proves no length was baked in, so the warnings would only be noise here
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, args, str(path), dynamo=False, opset_version=OPSET,
            input_names=input_names(spec, consts), output_names=output_names(spec, consts),
            dynamic_axes=dynamic_axes(spec, consts), do_constant_folding=True,
        )
    _simplify(path)
    _check_io(path, spec, consts)


def _simplify(path: Path) -> None:
    """Constant Reshape targets (export.simplify); a graph the shape inference cannot follow stays as traced."""
    import onnx

    from export.simplify import constant_reshape_targets

    model = onnx.load(str(path))
    try:
        changed = constant_reshape_targets(model)
    except Exception as e:  # noqa: BLE001 - an optimisation only: the traced graph is correct as it is
        log.info("%s: shape simplification skipped (%s)", path.name, e)
        return
    if changed:
        onnx.save(model, str(path))


def _check_io(path: Path, spec, consts) -> None:
    """The traced graph must expose exactly the declared IO (a wrapper/spec mismatch is a bug)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    got_in = [i.name for i in m.graph.input]
    got_out = [o.name for o in m.graph.output]
    if got_in != input_names(spec, consts) or got_out != output_names(spec, consts):
        raise RuntimeError(f"{spec.name}: exported IO {got_in} -> {got_out} differs from export/graphs.py")


def quantize_int8(src: Path, dst: Path) -> None:
    """ORT dynamic quantisation of the MatMul/Gemm weights (per tensor, signed int8 weights), the logits layer excepted."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src), load_external_data=False).graph
    keep = [n.name for n in graph.node if n.op_type in INT8_OPS and set(n.output) & set(INT8_KEEP_FP32_OUTPUTS)]
    with _quiet_root_logger():  # the quantiser logs one root-logger line per tensor it skips
        quantize_dynamic(
            str(src), str(dst), op_types_to_quantize=list(INT8_OPS), per_channel=False, weight_type=QuantType.QInt8,
            nodes_to_exclude=keep,
            # only weights are quantised: MatMuls of two activations (attention scores) stay FP32
            extra_options={"MatMulConstBOnly": True},
        )


# Static INT8 of the audio graphs (the decoder and the vocoder, compute-bound convolutions): int8
# weights per output channel and uint8 activations with ranges calibrated on the bundle's own data
# (export.calibration), in QDQ form so ORT fuses each Conv into its int8 kernel (VNNI where the CPU has
# it).  Kept in FP32: the layers at the edges, where int8 rounding is least diluted: the vocoder's
# conditioning, first and last convolutions (conv_post writes the waveform) and the decoder's output
# projection (the prior mean/log-scale).
INT8_STATIC_OPS = ("Conv", "ConvTranspose")
INT8_STATIC_KEEP_FP32 = ("/dec/cond/", "/dec/conv_pre/", "/dec/conv_post/", "/enc_p/proj/", "/cond/")


def quantize_int8_static(src: Path, dst: Path, calibration: list[dict]) -> None:
    """Static INT8 (QDQ, per-channel int8 weights, uint8 activations, min/max ranges over ``calibration``,
    a list of feeds: input name -> array)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration)

        def get_next(self):
            return next(self._it, None)

    graph = onnx.load(str(src), load_external_data=False).graph
    keep = [n.name for n in graph.node if n.op_type in INT8_STATIC_OPS and any(k in n.name for k in INT8_STATIC_KEEP_FP32)]
    with _quiet_root_logger(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(INT8_STATIC_OPS), nodes_to_exclude=keep,
                        calibrate_method=CalibrationMethod.MinMax)


def convert_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and activations, with the ops of FP16_KEEP_FP32_OPS in FP32 and FP32 graph IO."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")  # "values truncated to fp16 range" for -1e4/-inf mask constants is expected
        out = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP16_KEEP_FP32_OPS),
                                       disable_shape_infer=False)
    onnx.save(out, str(dst))


def externalize(path: Path, min_bytes: int = 1024) -> Path | None:
    """Move the graph's tensors of ``min_bytes`` or more into ``<file>.data`` beside it (ONNX external
    data) and return that path (None: nothing that large).  ONNX Runtime memory-maps external data
    and drops the mapping once the kernels have pre-packed their weights, where an inline graph keeps
    the parsed protobuf, the initializers and the packed copies alive at once while a session starts
    (measured on the full-size v2 graphs: 0.89 -> 0.65 GiB resident after loading the four serving
    graphs, the same kernels and speed)."""
    import onnx

    model = onnx.load(str(path))
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if not any(len(t.raw_data) >= min_bytes for t in model.graph.initializer):
        return None
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=min_bytes)
    data.chmod(path.stat().st_mode & 0o777)  # onnx creates it owner-only; a server may run as another user
    return data


@contextlib.contextmanager
def _quiet_root_logger(level: int = logging.ERROR):
    """ORT's quantisation/float16 tools log per-tensor notes on the root logger; mute them while they run."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.transformers.float16")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, saved):
            lg.setLevel(lvl)
