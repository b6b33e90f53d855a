"""How the nets' operations are computed, apart from the nets themselves.

`choice.py` says which library computes an operation (the model options `conv_impl` and `bn_impl`: XLA's own, or
oneDNN's on the CPU), `conv.py` dispatches the convolutions and `batch_norm.py` training's batch norms accordingly,
`onednn.py` calls oneDNN's primitives through its C API, and `ffi.py` makes a Python function an XLA FFI handler that
works on XLA's buffers in place. This package imports JAX and NumPy only.
"""
