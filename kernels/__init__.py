"""Triton kernels, importable as ``localpref.kernels`` (never as a top-level ``kernels``).

One kernel per file, each beside its plain-PyTorch reference of the same signature.
"""
