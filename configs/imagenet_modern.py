"""Modern variants beside the paper (named options, not paper settings), on the paper's ImageNet recipe.

    python -m resnet_jax.main --config=configs/imagenet_modern.py:resnet50_v1d --workdir=gs://BUCKET/resnet50_v1d

ARG: resnet50_v1d, resnet101_v1d, resnet152_v1d (mmpretrain's ResNetV1D: deep 3-conv stem, average-pool
downsampling in projection shortcuts, stride on the 3x3), resnet50_bf16 (ResNet-50 computing in bfloat16 with
float32 parameters). Reference points (mmpretrain, its own recipe, 1-crop top-1 accuracy %): ResNetV1D-50/101/152
77.54/78.93/79.41; ResNet-50 fp16 76.30. With the paper's recipe expect the 10-crop errors of configs/imagenet_table3.py
to improve by roughly a point for v1d, and bf16 to match fp32 within noise.
Hardware: as configs/imagenet_table3.py; bf16 halves activation memory
(speed: benchmarks/train_step.py --dtype=bfloat16).
"""

from configs.imagenet_recipe import recipe

VARIANTS = ("resnet50_v1d", "resnet101_v1d", "resnet152_v1d", "resnet50_bf16")


def get_config(arg: str = "resnet50_v1d"):
    if arg not in VARIANTS:
        raise ValueError(f"Unknown variant {arg!r}; choose from {VARIANTS}.")
    if arg == "resnet50_bf16":
        c = recipe("resnet50")
        c.model.dtype = "bfloat16"
        return c
    return recipe(arg)
