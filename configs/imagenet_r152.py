"""ResNet-152 on ImageNet with the paper's recipe (configs/imagenet_recipe.py), option B shortcuts.

    python -m resnet_jax.main --config=configs/imagenet_r152.py --workdir=gs://BUCKET/imagenet_r152
    python -m resnet_jax.evaluate --workdir=gs://BUCKET/imagenet_r152 --protocol=10crop --split=validation

Paper, top-1 / top-5 error % on the validation set:
Table 3: 21.43 / 5.71; Table 4 (multi-scale): 19.38 / 4.49; released model 1-crop 23.0 / 6.7.
Hardware: a TPU v3-8 or 8 GPUs; 60e4 iterations of 256 images.
"""

from configs import imagenet_recipe


def get_config():
    return imagenet_recipe.recipe("resnet152")
