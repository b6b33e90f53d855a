"""The nets' weights and modules in other frameworks' forms.

`convert.py` maps weights to and from PyTorch state dicts (torchvision's, mmpretrain's and akamaster's layouts),
`torch_files.py` reads `torch.save` files without torch and without running their code, and `nnx_bridge.py` gives a
trained net as a Flax NNX module. Public names: `resnet_jax.convert`.
"""
