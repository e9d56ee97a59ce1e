"""onnxruntime session for one model version: explicit provider choice, fixed batch sizes, warm-up.

The provider is chosen, never left to onnxruntime's silent fallback: CUDA is used only when
``onnxruntime.get_available_providers()`` lists it *and* a session created on it really runs
on it (checked with ``session.get_providers()`` and one probe inference); otherwise the CPU.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .manifest import IMAGE_OUTPUT, Manifest

log = logging.getLogger("gan_serve.runtime")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# Process-wide: once CUDA has failed its probe, later loads skip straight to the CPU.
_cuda_failure: str | None = None
_cuda_lock = threading.Lock()


class ProviderUnavailable(RuntimeError):
    """``device=cuda`` was asked for but CUDA cannot run this model here."""


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "auto"  # auto | cuda | cpu
    threads: int = 0
    max_batch_size: int = 64
    buckets: str = "auto"  # auto | exact | pow2
    cuda_graphs: bool = False


def batch_sizes_for(max_batch_size: int, mode: str) -> list[int]:
    """The batch sizes the batcher will run: every size (exact) or powers of two and the max."""
    if mode == "exact":
        return list(range(1, max_batch_size + 1))
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch_size:
        sizes.append(max_batch_size)
    return sizes


def _session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Idle pool threads sleep instead of spinning: the event loop and encoders share the cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class GeneratorRuntime:
    """Runs ``z`` (+ ``label``) -> ``image`` uint8 [n, S, S, C] for any n up to the batch limit."""

    def __init__(self, directory: Path, manifest: Manifest, options: RuntimeOptions) -> None:
        self.manifest = manifest
        self.options = options
        self.onnx_path = manifest.onnx_path(directory)
        self.session, self.provider = self._open_session()
        mode = options.buckets
        if mode == "auto":
            mode = "pow2" if self.provider == CUDA else "exact"
        self.batch_sizes = batch_sizes_for(options.max_batch_size, mode)
        self._graph_slots: dict[int, _GraphSlot] = {}
        # The graph's two inputs: latents and labels, or source images and directions.
        names = [spec.name for spec in manifest.inputs]
        self.first_input = names[0]
        self.second_input = names[1] if len(names) > 1 else None
        self._use_graphs = self.provider == CUDA and options.cuda_graphs

    @property
    def provider_name(self) -> str:
        """Short provider name for listings and metrics: ``cuda`` or ``cpu``."""
        return "cuda" if self.provider == CUDA else "cpu"

    # --- provider choice ---------------------------------------------------------------

    def _open_session(self) -> tuple[ort.InferenceSession, str]:
        global _cuda_failure
        device = self.options.device
        if device in ("auto", "cuda"):
            with _cuda_lock:
                reason = _cuda_failure
                if reason is None and CUDA not in ort.get_available_providers():
                    reason = "this onnxruntime has no CUDA support"
                if reason is None:
                    try:
                        return self._cuda_session(), CUDA
                    except ProviderUnavailable as exc:
                        reason = str(exc)
                    except Exception as exc:  # any failure means: not usable here
                        reason = f"CUDA failed its probe: {type(exc).__name__}: {exc}"
                _cuda_failure = reason
            if device == "cuda":
                raise ProviderUnavailable(f"device=cuda but CUDA is not usable: {reason}")
            log.info("running on the CPU: %s (device=%s)", reason, device)
        sess = ort.InferenceSession(
            str(self.onnx_path), _session_options(self.options.threads), providers=[CPU]
        )
        return sess, CPU

    def _cuda_session(self) -> ort.InferenceSession:
        cuda_opts = {"cudnn_conv_algo_search": "HEURISTIC"}
        if self.options.cuda_graphs:
            cuda_opts["enable_cuda_graph"] = "1"
        ort.set_default_logger_severity(4)  # the probe's expected failure is not an error
        try:
            sess = ort.InferenceSession(
                str(self.onnx_path),
                _session_options(self.options.threads),
                providers=[(CUDA, cuda_opts), CPU],
            )
        finally:
            ort.set_default_logger_severity(2)
        if sess.get_providers()[0] != CUDA:
            raise ProviderUnavailable("no usable CUDA device or CUDA libraries found")
        z, labels = self._dummy(1)
        first, second = self._names()
        feed = {first: z}
        if labels is not None:
            feed[second] = labels
        if not self.options.cuda_graphs:  # graph sessions must run through IO binding
            sess.run([IMAGE_OUTPUT], feed)
        return sess

    # --- running -------------------------------------------------------------------------

    def bucket_for(self, n: int) -> int:
        for size in self.batch_sizes:
            if size >= n:
                return size
        raise ValueError(f"batch of {n} exceeds max_batch_size {self.batch_sizes[-1]}")

    def run(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """z float32 [n, nz], labels int64 [n] (token ids [n, L] for text) | None -> uint8
        [n, S, S, C]; pads to a bucket."""
        n = z.shape[0]
        size = self.bucket_for(n)
        if size != n:
            z = np.concatenate([z, np.zeros((size - n, *z.shape[1:]), z.dtype)])
            if labels is not None:
                pad = np.zeros((size - n, *labels.shape[1:]), np.int64)
                labels = np.concatenate([labels, pad])
        if self.provider == CUDA:
            out = self._run_cuda(z, labels)
        else:
            feed = {self.first_input: z}
            if labels is not None:
                feed[self.second_input] = labels
            out = self.session.run([IMAGE_OUTPUT], feed)[0]
        return out[:n]

    def _run_cuda(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """IO binding: inputs copied once to the device, the uint8 output bound to host memory.

        With CUDA graphs, each bucket has fixed device buffers updated in place and its own
        graph id, so a graph is captured once per bucket and replayed afterwards.
        """
        if self._use_graphs:
            slot = self._graph_slots.get(z.shape[0])
            if slot is None:
                slot = self._graph_slots[z.shape[0]] = _GraphSlot(self, z.shape[0])
            return slot.run(z, labels)
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.first_input, np.ascontiguousarray(z))
        if labels is not None:
            binding.bind_cpu_input(self.second_input, np.ascontiguousarray(labels))
        binding.bind_output(IMAGE_OUTPUT, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _names(self) -> tuple[str, str | None]:
        names = [spec.name for spec in self.manifest.inputs]
        return names[0], (names[1] if len(names) > 1 else None)

    def _dummy(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Zeros shaped like the graph's inputs, batch n."""
        specs = self.manifest.inputs
        first = np.zeros((n, *specs[0].shape[1:]), np.dtype(specs[0].dtype))
        second = np.zeros((n, *specs[1].shape[1:]), np.int64) if len(specs) > 1 else None
        return first, second

    def warmup_sizes(self) -> list[int]:
        """The batch sizes warm-up runs. On CUDA every size: a new shape's first run picks
        kernels (and captures a graph). On the CPU the smallest and the largest: there a new
        shape's first run costs what its later runs do (measured for every shipped model, sizes
        1-64), the largest sizes the memory arena, and warming all 64 sizes of six models took
        most of a 13-second start."""
        if self.provider == CUDA:
            return list(self.batch_sizes)
        return sorted({self.batch_sizes[0], self.batch_sizes[-1]})

    def warmup(self) -> None:
        """Run the warm-up sizes once, so no request pays for first-run allocations."""
        for size in self.warmup_sizes():
            self.run(*self._dummy(size))


class _GraphSlot:
    """Fixed device buffers and an IO binding for one bucket size (CUDA graph replay)."""

    def __init__(self, runtime: GeneratorRuntime, size: int) -> None:
        m = runtime.manifest
        self.session = runtime.session
        self.lock = threading.Lock()
        first, second = m.inputs[0], (m.inputs[1] if len(m.inputs) > 1 else None)
        self.z = ort.OrtValue.ortvalue_from_shape_and_type(
            [size, *first.shape[1:]], np.dtype(first.dtype), "cuda", 0
        )
        self.labels = (
            ort.OrtValue.ortvalue_from_shape_and_type(
                [size, *second.shape[1:]], np.int64, "cuda", 0
            )
            if second is not None
            else None
        )
        shape = [size, m.image_size, m.image_size, m.channels]
        self.out = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.uint8, "cuda", 0)
        self.binding = self.session.io_binding()
        self.binding.bind_ortvalue_input(first.name, self.z)
        if self.labels is not None:
            self.binding.bind_ortvalue_input(second.name, self.labels)
        self.binding.bind_ortvalue_output(IMAGE_OUTPUT, self.out)
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("gpu_graph_id", str(size))

    def run(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        with self.lock:
            self.z.update_inplace(np.ascontiguousarray(z))
            if self.labels is not None and labels is not None:
                self.labels.update_inplace(np.ascontiguousarray(labels))
            self.session.run_with_iobinding(self.binding, self.run_options)
            return self.out.numpy().copy()
