"""The on-device runtime (edgessm.runtime): numpy + onnxruntime only.

Runs an edgessm ONNX step graph one time step per call, the recurrent state kept between
calls (on the GPU with the CUDA/TensorRT providers). Works from the installed package and
from a plain copy of this folder (``python -m <folder> MODEL.onnx``); never imports torch,
onnx or the rest of edgessm. onnxruntime itself is imported when a session is created.

    from edgessm.runtime import StreamingSession
    s = StreamingSession("model.onnx", provider="auto", batch=1)
    y_t = s.step(x_t)            # x_t (1, d_input) -> y_t (1, d_output)
    print(s.providers)           # what actually runs (a fallback is never silent)
"""
from .contract import GraphSpec, StateSpec, TensorSpec
from .errors import EdgeSSMRuntimeError, RuntimeInputError, RuntimeModelError, RuntimeProviderError
from .latency import LatencyStats, floor_model_bytes, measure_floor, measure_latency
from .session import StreamingSession

__all__ = ["StreamingSession", "GraphSpec", "StateSpec", "TensorSpec", "EdgeSSMRuntimeError",
           "RuntimeInputError", "RuntimeModelError", "RuntimeProviderError", "LatencyStats",
           "measure_latency", "measure_floor", "floor_model_bytes"]
