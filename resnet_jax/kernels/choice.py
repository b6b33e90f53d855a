"""Which library computes an operation of the nets: the model options `conv_impl` and `bn_impl`.

- 'xla': XLA's own, compiled for whatever backend runs the program.
- 'onednn': on XLA:CPU, oneDNN's kernels (`resnet_jax.kernels.onednn`) called from the compiled program on XLA's own
  buffers (`resnet_jax.kernels.ffi`).
- 'auto' (the default): 'onednn' for a single-device program on the CPU backend when oneDNN loads and its kernels
  pass a check against XLA's in this process, 'xla' otherwise. Accelerators always run XLA's. A multi-device CPU
  program (simulated devices, `jax.distributed`) keeps XLA's too: a custom call without a sharding rule under a
  sharded `jit` would gather every shard onto one device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from resnet_jax.core.errors import ConfigError
from resnet_jax.kernels import onednn

IMPLS = ("auto", "xla", "onednn")


def onednn_dtype(dtype: Any) -> str | None:
    """The name of `dtype` if oneDNN computes it here ('float32', 'bfloat16'), else None."""
    name = jnp.dtype(dtype).name
    return name if name in onednn.DATA_TYPES else None


def check(option: str, impl: str) -> None:
    """Raises ValueError for an unknown `impl` of `option` ('conv_impl', 'bn_impl'), ConfigError for 'onednn' where
    oneDNN does not load (the message says how to install it). Asks nothing of JAX's backends, so configs can be
    checked before `jax.distributed` starts."""
    if impl not in IMPLS:
        raise ValueError(f"Invalid {option} {impl!r}. Valid values: {IMPLS}.")
    if impl == "onednn" and not onednn.available():
        raise ConfigError(f"{option}='onednn' asks for oneDNN, but {onednn.unavailable_reason()}")


def resolve(option: str, impl: str, what: str, works: Callable[[], bool]) -> str:
    """'xla' or 'onednn': what `impl` of `option` means in this process (see the module docstring), `works()` saying
    whether oneDNN's `what` ('convolutions', ...) pass their check; `check`'s errors."""
    check(option, impl)
    if impl == "auto":
        on_one_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
        impl = "onednn" if on_one_cpu and onednn.available() and works() else "xla"
        logging.log_first_n(logging.INFO, "%s (%s='auto'): %s.", 1, what.capitalize(), option, impl)
    return impl


def agrees(option: str, what: str, ours: Callable, theirs: Callable, *args, rtol: float, atol: float) -> bool:
    """Whether `ours` (oneDNN's `what`, jitted end to end through the FFI handler) gives `theirs`' results on `args`
    in this process; a warning naming the failure if not. A library that loads can still fail later: a jaxlib whose
    FFI structs differ from the handler's (`ffi.py` checks them at each call), a oneDNN that miscomputes; 'auto' then
    keeps XLA's rather than failing the run."""
    try:
        with jax.ensure_compile_time_eval():  # concrete results even when asked from inside a trace
            leaves = zip(jax.tree.leaves(ours(*args)), jax.tree.leaves(theirs(*args)), strict=True)
            if all(np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol) for a, b in leaves):
                return True
            failure = "its results differ from XLA's"
    except Exception as error:  # noqa: BLE001 - whatever fails, 'auto' must still run
        failure = f"{type(error).__name__}: {error}".splitlines()[0]
    logging.warning("oneDNN's %s failed their check (%s); XLA computes them (%s='auto').", what, failure, option)
    return False
