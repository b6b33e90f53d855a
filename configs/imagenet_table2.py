"""Table 2: plain vs residual nets of 18 and 34 layers on ImageNet, option A shortcuts, 10-crop testing.

    python -m resnet_jax.main --config=configs/imagenet_table2.py:resnet34 --workdir=gs://BUCKET/table2_resnet34

ARG: plain18, resnet18, plain34, resnet34. Recipe: configs/imagenet_recipe.py (60e4 iterations of 256 images).
Paper, top-1 error % (10-crop, validation): plain-18 27.94, ResNet-18 27.88, plain-34 28.54, ResNet-34 25.03.
Hardware: as configs/imagenet_r50.py; the 34-layer nets cost about twice the 18-layer ones.
Collect the runs with `python -m experiments.imagenet_tables`.
"""

from configs.imagenet_recipe import Row, table_config

ROWS = {net: Row(net, "A") for net in ("plain18", "resnet18", "plain34", "resnet34")}  # option A throughout


def get_config(arg: str = "resnet34"):
    return table_config(ROWS, arg, final_protocol="10crop")
