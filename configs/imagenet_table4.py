"""Table 4: single-model results with multi-scale fully-convolutional testing (shorter side in
{224, 256, 384, 480, 640}, score maps averaged over positions and scales).

    python -m resnet_jax.main --config=configs/imagenet_table4.py:resnet50 --workdir=gs://BUCKET/table4_resnet50
    python -m resnet_jax.evaluate --workdir=gs://BUCKET/table3_resnet50 --protocol=multiscale

The nets and their training are those of Table 3: training with this config (first command, a workdir of its own)
gives both rows in one run; a finished Table 3 run gives its Table 4 row by evaluating its checkpoint with
--protocol=multiscale (second command; resuming it with this config is refused, as it changes the final protocol).
ARG: resnet34_B, resnet34_C, resnet50, resnet101, resnet152.
Paper, top-1 / top-5 error % (validation): ResNet-34 B 21.84/5.71, C 21.53/5.60; ResNet-50 20.74/5.25;
ResNet-101 19.87/4.60; ResNet-152 19.38/4.49.
Hardware: as Table 3; multi-scale evaluation runs 5 canvases per image, of up to 640x1280 pixels.
"""

from configs import imagenet_table3
from configs.imagenet_recipe import table_config

# Table 3's nets with projection shortcuts, tested multi-scale.
ROWS = {arg: imagenet_table3.ROWS[arg] for arg in ("resnet34_B", "resnet34_C", "resnet50", "resnet101", "resnet152")}


def get_config(arg: str = "resnet50"):
    c = table_config(ROWS, arg, final_protocol="multiscale")
    c.eval.batch_size = 32  # five canvases per image (up to 640x1280), each scored with its mirror
    return c
