"""Table 4: single-model results with multi-scale fully-convolutional testing (shorter side in
{224, 256, 384, 480, 640}, score maps averaged over positions and scales).

    python -m resnet_jax.main --config=configs/imagenet_table4.py:resnet50 --workdir=gs://BUCKET/table3_resnet50
    python -m resnet_jax.evaluate --workdir=gs://BUCKET/table3_resnet50 --protocol=multiscale

The nets and their training are those of Table 3: a finished Table 3 run gives its Table 4 row by evaluating its
checkpoint with --protocol=multiscale (second command); training with this config does both in one run.
ARG: resnet34_B, resnet34_C, resnet50, resnet101, resnet152.
Paper, top-1 / top-5 error % (validation): ResNet-34 B 21.84/5.71, C 21.53/5.60; ResNet-50 20.74/5.25;
ResNet-101 19.87/4.60; ResNet-152 19.38/4.49.
Hardware: as Table 3; multi-scale evaluation runs 5 scales of up to 1280x1280 canvases per image.
"""

from configs.imagenet_recipe import Row, table_config

ROWS = {
    "resnet34_B": Row("resnet34", "B"),
    "resnet34_C": Row("resnet34", "C"),
    "resnet50": Row("resnet50", "B"),
    "resnet101": Row("resnet101", "B"),
    "resnet152": Row("resnet152", "B"),
}


def get_config(arg: str = "resnet50"):
    c = table_config(ROWS, arg, final_protocol="multiscale")
    c.eval.batch_size = 32  # five canvases of up to 1280x1280 per image
    return c
