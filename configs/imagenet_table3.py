"""Table 3: shortcut options A/B/C and deeper bottleneck nets on ImageNet, 10-crop testing.

    python -m resnet_jax.main --config=configs/imagenet_table3.py:resnet50 --workdir=gs://BUCKET/table3_resnet50

ARG: plain34, resnet34_A, resnet34_B, resnet34_C, resnet50, resnet101, resnet152 (50+ use option B and v1
bottlenecks, the stride on the first 1x1 as in the authors' release). Recipe: configs/imagenet_recipe.py.
Paper, top-1 / top-5 error % (10-crop, validation): plain-34 28.54/10.02; ResNet-34 A 25.03/7.76, B 24.52/7.46,
C 24.19/7.40; ResNet-50 22.85/6.71; ResNet-101 21.75/6.05; ResNet-152 21.43/5.71.
Hardware: a TPU v3-8 or 8 GPUs; 60e4 iterations of 256 images (ResNet-152 costs about 3x ResNet-50).
"""

from configs.imagenet_recipe import Row, table_config

ROWS = {
    "plain34": Row("plain34", "A"),
    "resnet34_A": Row("resnet34", "A"),
    "resnet34_B": Row("resnet34", "B"),
    "resnet34_C": Row("resnet34", "C"),
    "resnet50": Row("resnet50", "B"),
    "resnet101": Row("resnet101", "B"),
    "resnet152": Row("resnet152", "B"),
}


def get_config(arg: str = "resnet50"):
    return table_config(ROWS, arg, final_protocol="10crop")
