"""The on-device runtime: numpy + onnxruntime only (edgessm.runtime)."""
