"""Weights to and from PyTorch state dicts: `resnet_jax.interop.convert`, under its public name."""

from resnet_jax.interop.convert import (
    TORCH_LAYOUTS,
    detect_layout,
    export_torch_state_dict,
    load_torch_state_dict,
    read_state_dict,
)

__all__ = ["TORCH_LAYOUTS", "detect_layout", "export_torch_state_dict", "load_torch_state_dict", "read_state_dict"]
