"""ResNet-50 on ImageNet with the paper's recipe (configs/imagenet_recipe.py), option B shortcuts.

    python -m resnet_jax.main --config=configs/imagenet_r50.py --workdir=gs://BUCKET/imagenet_r50
    python -m resnet_jax.evaluate --workdir=gs://BUCKET/imagenet_r50 --protocol=10crop --split=validation

Paper, top-1 / top-5 error % on the validation set:
Table 3: 22.85 / 6.71; Table 4 (multi-scale): 20.74 / 5.25; released model 1-crop 24.7 / 7.8.
Hardware: a TPU v3-8 or 8 GPUs; 60e4 iterations of 256 images.
"""

from configs import imagenet_recipe


def get_config():
    return imagenet_recipe.recipe("resnet50")
