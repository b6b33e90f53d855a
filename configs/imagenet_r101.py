"""ResNet-101 on ImageNet with the paper's recipe (configs/imagenet_recipe.py), option B shortcuts.

    python -m resnet_jax.main --config=configs/imagenet_r101.py --workdir=gs://BUCKET/imagenet_r101
    python -m resnet_jax.evaluate --workdir=gs://BUCKET/imagenet_r101 --protocol=10crop --split=validation

Paper, top-1 / top-5 error % on the validation set:
Table 3: 21.75 / 6.05; Table 4 (multi-scale): 19.87 / 4.60; released model 1-crop 23.6 / 7.1.
Hardware: a TPU v3-8 or 8 GPUs; 60e4 iterations of 256 images.
"""

from configs import imagenet_recipe


def get_config():
    return imagenet_recipe.recipe("resnet101")
