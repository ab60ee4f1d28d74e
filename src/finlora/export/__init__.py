"""Exporting a trained classifier to other runtimes."""

from finlora.export.onnx import export_onnx

__all__ = ["export_onnx"]
