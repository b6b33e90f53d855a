"""Parameters and multiply-adds of every named model beside the paper's Table 1 and Table 6.

    python benchmarks/model_table.py            # Markdown table (the one in the README)

Multiply-adds count convolutions and the fully-connected layer for one 224x224 (ImageNet) or 32x32 (CIFAR) image,
as Table 1 does. The "paper" columns are Table 1's FLOPs, Table 6's parameter counts, and (ImageNet parameters)
torchvision's option-B counts quoted in PAPER.md.
"""

import jax
import jax.numpy as jnp

from resnet_jax.flops import count_multiply_adds
from resnet_jax.models import MODEL_NAMES, create_model, input_shape, is_cifar

PAPER_MULTIPLY_ADDS = {"resnet18": 1.8e9, "resnet34": 3.6e9, "resnet50": 3.8e9, "resnet101": 7.6e9, "resnet152": 11.3e9}
PAPER_PARAMS = {
    "resnet18": 11.69e6,
    "resnet34": 21.80e6,
    "resnet50": 25.56e6,
    "resnet101": 44.55e6,
    "resnet152": 60.19e6,
    "resnet50_v1d": 25.58e6,
    "resnet101_v1d": 44.57e6,
    "resnet152_v1d": 60.21e6,
    "resnet20": 0.27e6,
    "resnet32": 0.46e6,
    "resnet44": 0.66e6,
    "resnet56": 0.85e6,
    "resnet110": 1.7e6,
    "resnet1202": 19.4e6,
}


def _row(name: str) -> str:
    cifar = is_cifar(name)
    model = create_model(name, num_classes=10 if cifar else 1000)
    shape = input_shape(name)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))
    params = sum(x.size for x in jax.tree.leaves(shapes["params"]))
    macs = count_multiply_adds(model, shape)
    cells = [
        name,
        "CIFAR-10" if cifar else "ImageNet",
        f"{params:,}",
        f"{PAPER_PARAMS[name] / 1e6:g}M" if name in PAPER_PARAMS else "",
        f"{macs / 1e9:.3f}e9" if not cifar else f"{macs / 1e6:.1f}e6",
        f"{PAPER_MULTIPLY_ADDS[name] / 1e9:g}e9" if name in PAPER_MULTIPLY_ADDS else "",
    ]
    if name in PAPER_MULTIPLY_ADDS:
        v15 = count_multiply_adds(create_model(name, num_classes=1000, stride_on_3x3=True), shape)
        cells.append(f"{v15 / 1e9:.3f}e9")
    else:
        cells.append("")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    print("| model | data | parameters | paper | multiply-adds | Table 1 | same net, v1.5 stride |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in MODEL_NAMES:
        print(_row(name), flush=True)


if __name__ == "__main__":
    main()
