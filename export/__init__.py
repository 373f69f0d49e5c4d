"""Lowering edgessm models to ONNX step and chunk graphs (edgessm.export)."""
