"""Table 3: shortcut options A/B/C and deeper bottleneck nets on ImageNet, 10-crop testing.

    python -m resnet_jax.main --config=configs/imagenet_table3.py:resnet50 --workdir=gs://BUCKET/table3_resnet50

ARG: plain34, resnet34_A, resnet34_B, resnet34_C, resnet50, resnet101, resnet152 (50+ use option B and v1
bottlenecks, the stride on the first 1x1 as in the authors' release). Recipe: configs/imagenet.py.
Paper, top-1 / top-5 error % (10-crop, validation): plain-34 28.54/10.02; ResNet-34 A 25.03/7.76, B 24.52/7.46,
C 24.19/7.40; ResNet-50 22.85/6.71; ResNet-101 21.75/6.05; ResNet-152 21.43/5.71.
Hardware: a TPU v3-8 or 8 GPUs; 60e4 iterations of 256 images (ResNet-152 costs about 3x ResNet-50).
"""

from configs import imagenet

ROWS = {  # ARG: (model, shortcut, paper (top-1, top-5) error %)
    "plain34": ("plain34", "A", (28.54, 10.02)),
    "resnet34_A": ("resnet34", "A", (25.03, 7.76)),
    "resnet34_B": ("resnet34", "B", (24.52, 7.46)),
    "resnet34_C": ("resnet34", "C", (24.19, 7.40)),
    "resnet50": ("resnet50", "B", (22.85, 6.71)),
    "resnet101": ("resnet101", "B", (21.75, 6.05)),
    "resnet152": ("resnet152", "B", (21.43, 5.71)),
}


def get_config(arg: str = "resnet50"):
    return imagenet.table_config(ROWS, arg, final_protocol="10crop")
