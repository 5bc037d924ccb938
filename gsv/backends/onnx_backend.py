"""ONNX Runtime backends (CPU, CUDA EP, TensorRT EP) over the graphs ``gsv-export`` writes into a bundle.

Graphs and their IO come from the bundle manifest (``artifacts`` entries of kind ``onnx``); this
module never imports the exporter.  Tensors cross the interface as torch tensors: on the CPU they
are handed to ORT as zero-copy numpy views (the KV cache of every layer is read in place) and
results come back as ``torch.from_numpy`` views; on CUDA, inputs and pre-allocated torch outputs
are bound by device pointer (IO binding), so nothing is copied through the host.

Devices: ``cpu``; ``cuda`` / ``cuda:N`` (CUDA EP); ``tensorrt`` / ``tensorrt:N`` (TensorRT EP with an
engine cache under ``BUNDLE/trt/ort-ep-cache``, CUDA EP as fallback for unsupported nodes).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import torch

from gsv.backends.base import AudioBackend, GPTBackend, MemoryPlan, ThreadPlan, check_noise
from gsv.errors import BundleError, GsvError
from gsv.models.sovits.model import latent_frames

log = logging.getLogger(__name__)

PRECISION_OF = {"onnx": "fp32", "onnx-int8": "int8", "onnx-fp16": "fp16"}
# onnx-int8: the GPT graphs are dynamically quantised; the decoder and vocoder graphs statically (with
# calibration) and only installed when their audio met its tolerance at export, else FP32 runs them.
FALLBACK = {"int8": "fp32"}
GPT_GRAPHS = ("gpt_prefill", "gpt_decode")
AUDIO_GRAPHS = ("sovits_window", "vocoder")
_NP = {"int64": np.int64, "float32": np.float32}


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class OrtGraph:
    """One ONNX graph in an ORT session: ``run(dict of torch tensors) -> list of torch tensors``."""

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None, trt_cache: Path | None = None,
                 spinning: bool = True, memory: MemoryPlan | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise BundleError(f"{self.path}: exported graph is missing (re-run gsv-export)")
        kind, _, index = device.partition(":")
        self.device_id = int(index or 0)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3  # ORT's warnings about unused initializers etc. are not actionable here
        # Spinning threads wait for work without sleeping: good inside a run (hundreds of small nodes),
        # harmful after it, when they would take the cores from torch (sampling, cache writes) or from
        # the next graph's own pool (measured: a torch pass right after a run lost a third of its speed)
        so.add_session_config_entry("session.force_spinning_stop", "1")
        if not spinning:
            # Never spin, even inside a run: for a graph of few large nodes (the vocoder's convolutions)
            # that runs beside another graph on the same cores, spinning would only steal their time
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        memory = memory or MemoryPlan()
        if not memory.prepack:
            so.add_session_config_entry("session.disable_prepacking", "1")
        if kind == "cpu":
            providers = ["CPUExecutionProvider"]
            if memory.shared_arena:
                _register_shared_cpu_arena()
                so.add_session_config_entry("session.use_env_allocators", "1")
        elif kind == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        elif kind == "tensorrt":
            cache = str(trt_cache or self.path.parent / "trt-ep-cache")
            Path(cache).mkdir(parents=True, exist_ok=True)
            providers = [("TensorrtExecutionProvider", {
                "device_id": self.device_id, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache, "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
            }), ("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        else:
            raise GsvError(f"unknown ONNX Runtime device {device!r} (cpu, cuda[:N], tensorrt[:N])")
        available = ort.get_available_providers()
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if wanted not in available:
            raise GsvError(f"ONNX Runtime here has no {wanted} (available: {', '.join(available)}); "
                           "install onnxruntime-gpu for cuda/tensorrt")
        self.on_gpu = kind != "cpu"
        self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._types = {i.name: i.type for i in self.session.get_inputs()}

    def run(self, feeds: dict[str, torch.Tensor], output_shapes: dict[str, tuple] | None = None) -> list[torch.Tensor]:
        """feeds: every graph input by name.  On GPU, ``output_shapes`` lets outputs be written straight
        into new torch CUDA tensors (else ORT allocates them on the host)."""
        if not self.on_gpu:
            arrays = {k: _as_numpy(v) for k, v in feeds.items()}
            return [torch.from_numpy(o) for o in self.session.run(self.outputs, arrays)]
        return self._run_bound(feeds, output_shapes or {})

    def _run_bound(self, feeds, output_shapes) -> list[torch.Tensor]:
        binding = self.session.io_binding()
        dev = torch.device("cuda", self.device_id)
        keep = []
        for name, t in feeds.items():
            t = t.to(dev).contiguous()
            keep.append(t)
            binding.bind_input(name, "cuda", self.device_id, _np_type(t), list(t.shape), t.data_ptr())
        outs: list[torch.Tensor | None] = []
        for name in self.outputs:
            shape = output_shapes.get(name)
            if shape is None:
                binding.bind_output(name, "cpu")
                outs.append(None)
                continue
            dtype = torch.int64 if name.endswith("lens") else torch.float32
            t = torch.empty(shape, dtype=dtype, device=dev)
            binding.bind_output(name, "cuda", self.device_id, _np_type(t), list(shape), t.data_ptr())
            outs.append(t)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        host = binding.copy_outputs_to_cpu()
        return [o if o is not None else torch.from_numpy(h).to(dev) for o, h in zip(outs, host)]


_ARENA_LOCK = threading.Lock()
_ARENA_REGISTERED = False  # ONNX Runtime's process-wide CPU allocator exists (it can be registered once)


def _register_shared_cpu_arena() -> None:
    """Register the process-wide CPU arena that sessions opt into with ``session.use_env_allocators``."""
    global _ARENA_REGISTERED
    import onnxruntime as ort

    with _ARENA_LOCK:
        if not _ARENA_REGISTERED:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's default arena settings
            _ARENA_REGISTERED = True


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    if t.device.type != "cpu":
        t = t.cpu()
    return t.detach().contiguous().numpy()


def _np_type(t: torch.Tensor):
    return {torch.float32: np.float32, torch.int64: np.int64, torch.float16: np.float16}[t.dtype]


# ------------------------------------------------------------------------------------------ backends
class OnnxGPTBackend(GPTBackend):
    """prefill / decode step through the exported GPT graphs; the cache is the shared KVCache."""

    def __init__(self, config, prefill: OrtGraph, decode: OrtGraph, name: str = "onnx"):
        self.config, self.prefill_graph, self.decode_graph, self.name = config, prefill, decode, name
        self.device = torch.device("cuda", decode.device_id) if decode.on_gpu else torch.device("cpu")
        self._binding, self._cache_key = None, None

    @classmethod
    def from_files(cls, config, prefill_path, decode_path, device="cpu", threads=None, name="onnx"):
        return cls(config, OrtGraph(prefill_path, device, threads), OrtGraph(decode_path, device, threads), name)

    def prefill(self, phones, phone_lens, bert, prompt, prompt_lens):
        c = self.config
        n, s = phones.shape[0], phones.shape[1] + prompt.shape[1]
        kv = (c.n_layer, n, c.n_head, s, c.hidden_dim // c.n_head)
        logits, k, v, seq_lens = self.prefill_graph.run(
            {"phones": phones.long(), "phone_lens": phone_lens.long(), "bert": bert.float(), "prompt": prompt.long(),
             "prompt_lens": prompt_lens.long()},
            {"logits": (n, c.vocab_size), "k": kv, "v": kv, "seq_lens": (n,)})
        return logits, k, v, seq_lens

    def decode_step(self, tokens, positions, k_cache, v_cache, kv_lens):
        c = self.config
        n = tokens.shape[0]
        if not self.decode_graph.on_gpu:
            return self._decode_step_cpu(tokens, positions, k_cache, v_cache, kv_lens)
        feeds = {"tokens": tokens.long(), "audio_pos": positions.long(), "kv_lens": kv_lens.long()}
        for i in range(c.n_layer):  # per-layer views of the caller's cache: nothing is copied
            feeds[f"past_k.{i}"] = k_cache[i]
            feeds[f"past_v.{i}"] = v_cache[i]
        new = (c.n_layer, n, c.n_head, c.hidden_dim // c.n_head)
        logits, new_k, new_v = self.decode_graph.run(feeds, {"logits": (n, c.vocab_size), "new_k": new, "new_v": new})
        return logits, new_k, new_v

    def _decode_step_cpu(self, tokens, positions, k_cache, v_cache, kv_lens):
        """IO binding by pointer: the per-layer cache inputs (48 at full size) are bound again only when
        the cache tensors change (growth, rows added or removed), not every step; outputs are written
        straight into new torch tensors."""
        c = self.config
        n = tokens.shape[0]
        k_cache, v_cache = k_cache.float().contiguous(), v_cache.float().contiguous()  # no-ops for a KVCache
        key = (k_cache.data_ptr(), v_cache.data_ptr(), tuple(k_cache.shape), tuple(v_cache.shape))
        if key != self._cache_key:
            # keyed by address and shape: a new cache at the same address with the same shape is
            # read correctly through the old binding, since ORT reads the memory when it runs
            self._binding = self.decode_graph.session.io_binding()
            for prefix, cache in (("past_k", k_cache), ("past_v", v_cache)):
                shape, step = list(cache.shape[1:]), cache[0].numel() * cache.element_size()
                for i in range(c.n_layer):
                    self._binding.bind_input(f"{prefix}.{i}", "cpu", 0, np.float32, shape, cache.data_ptr() + i * step)
            self._cache_key = key
        b = self._binding
        small = [t.long().contiguous() for t in (tokens, positions, kv_lens)]
        for name, t in zip(("tokens", "audio_pos", "kv_lens"), small):
            b.bind_input(name, "cpu", 0, np.int64, [n], t.data_ptr())
        new = (c.n_layer, n, c.n_head, c.hidden_dim // c.n_head)
        outs = (torch.empty(n, c.vocab_size), torch.empty(new), torch.empty(new))
        for name, t in zip(("logits", "new_k", "new_v"), outs):
            b.bind_output(name, "cpu", 0, np.float32, list(t.shape), t.data_ptr())
        self.decode_graph.session.run_with_iobinding(b)
        return outs


class OnnxAudioBackend(AudioBackend):
    """decode_audio = sovits_window (codes window + phones + ge + noise + speed -> z) then vocoder."""

    def __init__(self, config, window: OrtGraph, vocoder: OrtGraph, name: str = "onnx"):
        self.config, self.window_graph, self.vocoder_graph, self.name = config, window, vocoder, name
        self.device = torch.device("cuda", window.device_id) if window.on_gpu else torch.device("cpu")
        self.trims_vocoder = "trim" in vocoder.inputs  # graphs exported before trimming render every frame

    @classmethod
    def from_files(cls, config, window_path, vocoder_path, device="cpu", threads=None, name="onnx"):
        return cls(config, OrtGraph(window_path, device, threads), OrtGraph(vocoder_path, device, threads), name)

    def decode_audio(self, codes, code_lens, phones, phone_lens, ge, noise=None, speed: float = 1.0,
                     vocode_from=None, keep=None) -> torch.Tensor:
        b, tc = codes.shape
        c = self.config.inter_channels
        frames = latent_frames(tc, float(speed))
        if noise is None:  # noise_scale 0: z_p = m_p exactly, as the torch path's None
            noise = torch.zeros(b, c, frames)
        check_noise(noise, frames)
        z, frame_lens = self.window_graph.run(
            {"codes": codes.long(), "code_lens": code_lens.long(), "phones": phones.long(),
             "phone_lens": phone_lens.long(), "ge": ge.float(), "noise": noise.float(),
             "speed": torch.tensor(float(speed), dtype=torch.float32)},
            {"z": (b, c, frames), "frame_lens": (b,)})
        rows = self._vocoder_rows(z, frame_lens, vocode_from, keep)
        (audio,) = self.vocoder_graph.run(rows.graph_feeds(ge, self.trims_vocoder),
                                          {"audio": (b, rows.rendered_frames * self.config.hop_length)})
        return rows.place(audio, self.config.hop_length)


# ------------------------------------------------------------------------------------------ bundle
def find_artifact(bundle, graph: str, precision: str, kind: str = "onnx") -> dict:
    """The manifest entry of ``graph`` at ``precision`` (int8 falls back to fp32 for unquantised graphs)."""
    for p in (precision, FALLBACK.get(precision)):
        for a in bundle.artifacts:
            if a.get("kind") == kind and a.get("graph") == graph and a.get("precision") == p:
                if p != precision:
                    log.info("%s: no %s graph, using %s", graph, precision, p)
                return a
    raise BundleError(f"bundle {bundle.path} has no {precision} ONNX export of {graph}; "
                      f"run: gsv-export --bundle {bundle.path} --precision {precision}")


def _int8_audio_reason(bundle) -> str:
    """Why a bundle has no INT8 decoder/vocoder, from its verify.json."""
    import json

    try:
        report = json.loads((bundle.path / "onnx" / "verify.json").read_text("utf-8"))
        a8 = report["precisions"]["int8"]["audio_int8"]
        return (f"the INT8 decoder+vocoder missed their tolerance at export (SNR {float(a8['snr_db']):.1f} dB, "
                f"log-mel L1 {a8['log_mel_l1']:.3f}; limits {a8['tolerance']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "no INT8 decoder+vocoder in the bundle (exported before they existed: re-run gsv-export)"


def open_onnx_backends(bundle, name: str = "onnx", device: str = "cpu", threads: "ThreadPlan | int | None" = None,
                       memory: MemoryPlan | None = None):
    """(OnnxGPTBackend, OnnxAudioBackend) of an opened bundle for backend ``name`` (onnx, onnx-int8, onnx-fp16)."""
    plan = threads if isinstance(threads, ThreadPlan) else ThreadPlan(threads, threads)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise GsvError("the onnx backends need onnxruntime (pip install 'gsv[export]')") from None
    precision = PRECISION_OF[name]
    arts = {g: find_artifact(bundle, g, precision) for g in GPT_GRAPHS + AUDIO_GRAPHS}
    paths = {g: bundle.path / a["file"] for g, a in arts.items()}
    for g, a in arts.items():
        if a.get("data_file") and not (bundle.path / a["data_file"]).is_file():
            raise BundleError(f"{bundle.path / a['data_file']}: the weights of the {g} graph are missing "
                              f"(re-run gsv-export --bundle {bundle.path})")
    fallback = [g for g in AUDIO_GRAPHS if arts[g]["precision"] != precision]
    if precision == "int8" and fallback:
        log.warning("%s: INT8 GPT with FP32 %s: %s", name, " + ".join(fallback), _int8_audio_reason(bundle))
    trt_cache = bundle.path / "trt" / "ort-ep-cache" if device.startswith("tensorrt") else None
    graphs = {g: OrtGraph(p, device, plan.gpt if g in GPT_GRAPHS else plan.audio, trt_cache,
                          spinning=plan.audio_spinning or g in GPT_GRAPHS, memory=memory) for g, p in paths.items()}
    log.info("onnx backend %s on %s: %s", name, device, {g: p.name for g, p in paths.items()})
    gpt = OnnxGPTBackend(bundle.gpt_config, graphs["gpt_prefill"], graphs["gpt_decode"], name)
    audio = OnnxAudioBackend(bundle.sovits_config, graphs["sovits_window"], graphs["vocoder"], name)
    return gpt, audio
