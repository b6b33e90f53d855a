"""ResNet-34 on ImageNet with the paper's recipe (configs/imagenet_recipe.py), option B shortcuts.

    python -m resnet_jax.main --config=configs/imagenet_r34.py --workdir=gs://BUCKET/imagenet_r34
    python -m resnet_jax.evaluate --workdir=gs://BUCKET/imagenet_r34 --protocol=10crop --split=validation

Paper, top-1 / top-5 error % on the validation set:
Table 3: ResNet-34 B 24.52 / 7.46 (A 25.03, C 24.19); Table 4 (multi-scale): B 21.84 / 5.71.
Hardware: a TPU v3-8 or 8 GPUs; 60e4 iterations of 256 images.
"""

from configs import imagenet_recipe


def get_config():
    return imagenet_recipe.recipe("resnet34")
