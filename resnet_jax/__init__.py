"""resnet_jax: the networks, recipes and test protocols of He et al., "Deep Residual Learning" (CVPR 2016)."""
