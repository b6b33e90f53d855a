"""ResNet-18 on ImageNet with the paper's recipe (configs/imagenet_recipe.py), option B shortcuts.

    python -m resnet_jax.main --config=configs/imagenet_r18.py --workdir=gs://BUCKET/imagenet_r18
    python -m resnet_jax.evaluate --workdir=gs://BUCKET/imagenet_r18 --protocol=10crop --split=validation

Paper, top-1 / top-5 error % on the validation set: Table 2: ResNet-18 27.88 (option A; plain-18 27.94).
Hardware: a TPU v3-8 or 8 GPUs; 60e4 iterations of 256 images.
"""

from configs import imagenet_recipe


def get_config():
    return imagenet_recipe.recipe("resnet18")
