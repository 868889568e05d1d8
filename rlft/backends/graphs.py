"""CUDA graphs of a fixed-shape step, one per batch-size bucket (rlft/backends/lean.py's `StaticDecoder`).

A decode step of a 0.4B model is ~800 small kernels; launched one by one from Python on a GPU, the launches (not the
GPU) set its time. A CUDA graph records them once and replays them with one launch. What a graph may not do is
change shape or read a Python number that changes: the step it records reads and writes only buffers allocated
before the capture (tokens in, logits out, the KV cache, positions, the key mask, the write index) and advances
them on the device.

``Graphs(fn, device, capture)``: ``fn(b)`` runs the step over the first ``b`` rows of those buffers and returns its
output. ``graphs(b)`` runs it: the first call for a bucket runs ``fn`` as usual (on a side stream: the warm-up that
lazy initialisation -- cuBLAS workspaces, kernel loading -- needs before a capture) and then records it; later
calls replay the recording. ``capture=False`` (a CPU, or ``rollout.decode: graph`` without CUDA) calls ``fn``
every time: the same arithmetic, uncaptured, which is how CI tests it.

Graphs live as long as their decoder (one rollout): the weights and the cache they point at cannot move under
them, and their memory goes back to the allocator for the update. The buckets of one rollout share one memory
pool (only one replays at a time).
"""

from __future__ import annotations

import torch

from ..errors import RunError

_STREAMS: dict = {}  # device -> the side stream captures run on (one per device: its cuBLAS workspace is made once)


def _stream(device: torch.device):
    key = torch.device(device.type, device.index if device.index is not None else torch.cuda.current_device())
    if key not in _STREAMS:
        _STREAMS[key] = torch.cuda.Stream(key)
    return _STREAMS[key]


class Graphs:
    """One CUDA graph of ``fn`` per bucket, recorded on first use (see the module docstring)."""

    def __init__(self, fn, device: torch.device, capture: bool):
        self.fn, self.device = fn, torch.device(device)
        self.capture = capture and self.device.type == "cuda"
        self.graphs: dict[int, tuple] = {}  # bucket -> (CUDAGraph, its output tensor)
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None

    def __call__(self, b: int) -> torch.Tensor:
        if not self.capture:
            return self.fn(b)
        got = self.graphs.get(b)
        if got is not None:
            got[0].replay()
            return got[1]
        return self._first(b)

    def _first(self, b: int) -> torch.Tensor:
        """This step run as usual on the side stream, then recorded there for the next ones."""
        current, side = torch.cuda.current_stream(self.device), _stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            out = self.fn(b)  # the real step, and the warm-up before the capture
            side.synchronize()  # nothing of the warm-up still in flight when the capture starts
            graph = torch.cuda.CUDAGraph()
            # thread_local: rewards.overlap may score finished rows in another thread (a reward model on this GPU)
            # while a smaller bucket is recorded; only this thread's calls are checked against the capture
            graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
            try:
                static = self.fn(b)  # recorded, not run: it advances the buffers on every replay
            except Exception as e:
                _abandon(graph)
                raise RunError(f"capturing the decode step as a CUDA graph failed ({type(e).__name__}: {e}); set "
                               f"rollout.decode=eager to decode without CUDA graphs") from e
            graph.capture_end()
        current.wait_stream(side)
        out.record_stream(current)  # made on the side stream, read on this one
        self.graphs[b] = (graph, static)
        return out


def _abandon(graph) -> None:
    """End a capture that failed (the stream must leave capture mode), ignoring what that raises."""
    try:
        graph.capture_end()
    except Exception:  # the original error is the one to report
        pass
