"""Native TensorRT backends: the FP16 engines ``gsv-export --trt`` writes, run with torch CUDA tensors.

Every engine is deserialised once; each call sets the input shapes, binds torch CUDA tensors by
address (``set_tensor_address``) and runs ``execute_async_v3`` on the current torch CUDA stream,
so results stay on the GPU and ordering with torch ops is by stream.  Outputs whose shape depends
on input *values* (z and the audio at speed != 1) go through an output allocator.

The decode engine was built with one static cache length (min = opt = max in its profile), so the
GPT backend hands the engine a :class:`StaticKVCache`: every row is pre-allocated at that length
and the per-row ``kv_lens``/positions select what is valid.

``tensorrt`` is imported lazily: this module imports anywhere, and opening it without tensorrt or
a GPU raises a one-line :class:`~gsv.errors.GsvError`.  It cannot be exercised on the CPU-only
machines this project is developed on; the ``trt``-marked tests run it on a GPU.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from gsv.backends.base import AudioBackend, GPTBackend, KVCache, check_noise
from gsv.errors import BundleError, GsvError
from gsv.models.sovits.model import latent_frames

log = logging.getLogger(__name__)

_TORCH_DTYPE = {"FLOAT": torch.float32, "HALF": torch.float16, "INT64": torch.int64, "INT32": torch.int32,
                "BOOL": torch.bool}


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise GsvError("the trt backend needs the tensorrt Python package and a CUDA GPU (tensorrt is not installed)") from None
    if not torch.cuda.is_available():
        raise GsvError("the trt backend needs a CUDA GPU; none is visible")
    return trt


class TrtEngine:
    """One deserialised engine with its execution context."""

    def __init__(self, plan: Path, device: torch.device):
        trt = _import_trt()
        self.trt = trt
        self.device = device
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(device):
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(plan).read_bytes())
            if self.engine is None:
                raise BundleError(f"{plan}: TensorRT could not load this engine (other TensorRT version or GPU?)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._allocators = {}

    def profile_range(self, name: str) -> tuple:
        """(min, opt, max) shapes of input ``name`` in profile 0."""
        return tuple(self.engine.get_tensor_profile_shape(name, 0))

    def _dtype(self, name: str) -> torch.dtype:
        return _TORCH_DTYPE[self.engine.get_tensor_dtype(name).name]

    def run(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        keep = []
        for name in self.inputs:
            # a shape tensor's values (the vocoder's trim) are read by TensorRT on the host
            where = "cpu" if self.engine.is_shape_inference_io(name) else self.device
            t = feeds[name].to(where, self._dtype(name)).contiguous()
            keep.append(t)  # alive until the stream has consumed it (we synchronise below)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):  # value-dependent shape: TensorRT allocates through us
                alloc = self._allocators.setdefault(name, _OutputAllocator(self.trt, self.device, self._dtype(name)))
                self.context.set_output_allocator(name, alloc)
                outs[name] = alloc
            else:
                t = torch.empty(shape, dtype=self._dtype(name), device=self.device)
                self.context.set_tensor_address(name, t.data_ptr())
                outs[name] = t
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return [o.result() if isinstance(o, _OutputAllocator) else o for o in (outs[n] for n in self.outputs)]


class _OutputAllocator:
    """Backs a TensorRT output whose shape is known only after execution with a torch buffer."""

    def __new__(cls, trt, device, dtype):
        base = trt.IOutputAllocator

        class Impl(base):
            def __init__(self):
                base.__init__(self)
                self.buffer = torch.empty(0, dtype=dtype, device=device)
                self.shape = None

            def reallocate_output(self, name, memory, size, alignment):
                n = (size + self.buffer.element_size() - 1) // self.buffer.element_size()
                if self.buffer.numel() < n:
                    self.buffer = torch.empty(n, dtype=dtype, device=device)
                return self.buffer.data_ptr()

            def notify_shape(self, name, shape):
                self.shape = tuple(shape)

            def result(self):
                n = 1
                for d in self.shape:
                    n *= d
                return self.buffer[:n].view(self.shape).clone()

        return Impl()


class StaticKVCache(KVCache):
    """A KVCache whose rows are pre-allocated at the engine's static cache length (never regrown)."""

    def __init__(self, n_layer, n_head, head_dim, device, length: int, dtype=torch.float32):
        super().__init__(n_layer, n_head, head_dim, device, dtype)
        self.static_length = length
        self.k = torch.zeros(n_layer, 0, n_head, length, head_dim, device=self.device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def _grow_to(self, needed: int) -> None:
        if needed > self.static_length:
            raise GsvError(f"a row needs {needed} cache positions but the TensorRT decode engine was built "
                           f"with {self.static_length} (export/graphs.py TRT_CACHE_LEN)")

    def _shrink(self) -> None:  # the length is the engine's, whatever the rows need
        pass


class TrtGPTBackend(GPTBackend):
    name = "trt"

    def __init__(self, config, prefill: TrtEngine, decode: TrtEngine):
        self.config, self.prefill_engine, self.decode_engine = config, prefill, decode
        self.device = decode.device
        self.cache_length = int(decode.profile_range("past_k.0")[2][2])  # [B, H, T, Dh]; static: min = opt = max
        self.max_rows = int(decode.profile_range("tokens")[2][0])

    def new_cache(self) -> StaticKVCache:
        c = self.config
        return StaticKVCache(c.n_layer, c.n_head, c.hidden_dim // c.n_head, self.device, self.cache_length)

    def prefill(self, phones, phone_lens, bert, prompt, prompt_lens):
        return tuple(self.prefill_engine.run({"phones": phones, "phone_lens": phone_lens, "bert": bert,
                                              "prompt": prompt, "prompt_lens": prompt_lens}))

    def decode_step(self, tokens, positions, k_cache, v_cache, kv_lens):
        if tokens.shape[0] > self.max_rows:
            raise GsvError(f"{tokens.shape[0]} live rows exceed the decode engine's batch profile ({self.max_rows})")
        feeds = {"tokens": tokens, "audio_pos": positions, "kv_lens": kv_lens}
        for i in range(self.config.n_layer):
            feeds[f"past_k.{i}"] = k_cache[i]
            feeds[f"past_v.{i}"] = v_cache[i]
        return tuple(self.decode_engine.run(feeds))


class TrtAudioBackend(AudioBackend):
    name = "trt"

    def __init__(self, config, window: TrtEngine, vocoder: TrtEngine):
        self.config, self.window_engine, self.vocoder_engine = config, window, vocoder
        self.device = window.device
        self.trims_vocoder = "trim" in vocoder.inputs  # engines built before trimming render every frame

    def decode_audio(self, codes, code_lens, phones, phone_lens, ge, noise=None, speed: float = 1.0,
                     vocode_from=None, keep=None) -> torch.Tensor:
        b, tc = codes.shape
        frames = latent_frames(tc, float(speed))
        if noise is None:
            noise = torch.zeros(b, self.config.inter_channels, frames, device=self.device)
        check_noise(noise, frames)
        z, frame_lens = self.window_engine.run({
            "codes": codes, "code_lens": code_lens, "phones": phones, "phone_lens": phone_lens, "ge": ge,
            "noise": noise, "speed": torch.tensor(float(speed), dtype=torch.float32)})
        rows = self._vocoder_rows(z, frame_lens, vocode_from, keep)
        (audio,) = self.vocoder_engine.run(rows.graph_feeds(ge, self.trims_vocoder))  # run() moves them to the GPU
        return rows.place(audio, self.config.hop_length)


def find_engine(bundle, graph: str, gpu_arch: str, trt_version: str) -> dict:
    found = [a for a in bundle.artifacts if a.get("kind") == "trt" and a.get("graph") == graph]
    for a in found:
        if a.get("gpu_arch") == gpu_arch and a.get("trt_version") == trt_version:
            return a
    built = ", ".join(sorted({f"{a.get('gpu_arch')}/TensorRT {a.get('trt_version')}" for a in found})) or "none"
    raise BundleError(f"bundle {bundle.path} has no TensorRT engine of {graph} for {gpu_arch}/TensorRT {trt_version} "
                      f"(built: {built}); run: gsv-export --bundle {bundle.path} --trt")


def open_trt_backends(bundle, device: str = "cuda"):
    """(TrtGPTBackend, TrtAudioBackend) from the bundle's engines for this GPU and TensorRT version.

    ``device``: ``cuda`` or ``cuda:N`` (the server's ``--device``; ``cpu`` is refused)."""
    if not device.startswith("cuda"):
        raise GsvError(f"the trt backend runs on a CUDA device (cuda or cuda:N), not {device!r}")
    trt = _import_trt()
    dev = torch.device(device)
    major, minor = torch.cuda.get_device_capability(dev)
    arch = f"sm{major}{minor}"
    engines = {g: TrtEngine(bundle.path / find_engine(bundle, g, arch, trt.__version__)["file"], dev)
               for g in ("gpt_prefill", "gpt_decode", "sovits_window", "vocoder")}
    return (TrtGPTBackend(bundle.gpt_config, engines["gpt_prefill"], engines["gpt_decode"]),
            TrtAudioBackend(bundle.sovits_config, engines["sovits_window"], engines["vocoder"]))
