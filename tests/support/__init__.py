"""Helpers shared by every test area: a tiny ONNX generator and a real service process."""
