"""Parameters and multiply-adds of every named model beside the paper's (docs/paper.md).

    python -m benchmarks.model_table            # Markdown table (the one in the README)

Multiply-adds count convolutions and the fully-connected layer for one 224x224 (ImageNet) or 32x32 (CIFAR) image,
as Table 1 does. The "reference" columns are Table 1's multiply-adds, Table 6's parameter counts, torchvision's and
mmpretrain's option-B counts for the ImageNet nets, and mmpretrain's table for the CIFAR-stem nets (CIFAR-10 rows).
"""

from experiments import paper
from resnet_jax.models import MODEL_NAMES, create_model, spec
from resnet_jax.models.flops import count_multiply_adds, count_parameters


def reference_parameters() -> dict[str, float]:
    counts = {net: row["parameters"] for net, row in paper.table("Parameter counts").items()}
    counts.update({net: row["parameters"] for net, row in paper.table("Table 6").items()})
    counts.update(
        {r["model"]: r["parameters"] for r in paper.table("mmpretrain").values() if r["dataset"] == "cifar10"}
    )
    return counts


def _millions(count: float) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e6:.2g}M"


def _row(name: str, parameters: dict[str, float], table1: dict[str, dict]) -> str:
    entry = spec(name)
    cifar = entry.dataset == "cifar10"
    model = create_model(name, num_classes=entry.num_classes)
    shape = entry.input_shape
    params = count_parameters(model, shape)
    macs = count_multiply_adds(model, shape)
    cells = [
        name,
        "CIFAR-10" if cifar else "ImageNet",
        f"{params:,}",
        _millions(parameters[name]) if name in parameters else "",
        f"{macs / 1e9:.3f}e9" if not cifar or macs > 1e9 else f"{macs / 1e6:.1f}e6",
        f"{table1[name]['multiply-adds'] / 1e9:g}e9" if name in table1 else "",
    ]
    if name in table1:
        v15 = count_multiply_adds(create_model(name, num_classes=1000, stride_on_3x3=True), shape)
        cells.append(f"{v15 / 1e9:.3f}e9")
    else:
        cells.append("")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parameters, table1 = reference_parameters(), paper.table("Table 1")
    print("| model | data | parameters | reference | multiply-adds | Table 1 | same net, v1.5 stride |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in MODEL_NAMES:
        print(_row(name, parameters, table1), flush=True)


if __name__ == "__main__":
    main()
