"""How the nets' operations are computed, apart from the nets themselves.

`conv.py` chooses the library that computes the convolutions (the model option `conv_impl`: XLA's own, or oneDNN's
on the CPU), `onednn.py` calls oneDNN's convolutions through its C API, and `ffi.py` makes a Python function an XLA
FFI handler that works on XLA's buffers in place. This package imports JAX and NumPy only.
"""
