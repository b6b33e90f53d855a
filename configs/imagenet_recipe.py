"""ImageNet (ILSVRC-2012), Section 3.4: the recipe of Tables 2-4 for any ImageNet net.

    python -m resnet_jax.main --config=configs/imagenet.py:resnet50 --workdir=gs://BUCKET/imagenet_resnet50
    python -m resnet_jax.evaluate --workdir=gs://BUCKET/imagenet_resnet50 --protocol=10crop --split=validation

ARG is an ImageNet model name (resnet18..152, plain18..152, resnet50_v1d..152_v1d), optionally followed by
",A", ",B" or ",C" (shortcut option; default B, Table 2 uses A). Recipe: batch 256 in BN groups of 32 (the
authors' 8 GPUs), SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 when the validation error plateaus, up
to 60e4 iterations; shorter side resized to a random size in [256, 480], random 224 crop and flip, per-pixel mean,
PCA colour noise. Evaluation during training uses the 1-crop view (it drives the plateau schedule); the final
evaluation uses 10 crops (Tables 2-3); any protocol can be rerun on a checkpoint with resnet_jax.evaluate.

Paper, top-1 error % (10-crop / multi-scale): see configs/imagenet_r*.py and PAPER.md.
Hardware: a TPU v3-8 or 8 GPUs, 60e4 iterations of 256 images (120 epochs). For scale, flax's example trains ResNet-50
v1.5 for 100 epochs in 4.4 h on a TPU v3-8 (PAPER.md).
"""

from resnet_jax.config import base_config

STEPS_PER_EPOCH = 1_281_167 // 256


def get_config(arg: str = "resnet50"):
    model, *options = arg.split(",")
    c = base_config("imagenet2012", model)
    c.batch_size = 256
    c.num_steps = 600_000
    c.model.bn_group_size = 32
    if options:
        (c.model.shortcut,) = options
    c.schedule.kind = "plateau"
    c.schedule.base_lr = 0.1
    c.schedule.plateau_patience = 3
    c.eval.split = "validation"
    c.eval.protocol = "1crop"
    c.eval.final_protocol = "10crop"
    c.eval.batch_size = 256
    c.eval.every_steps = STEPS_PER_EPOCH
    c.checkpoint_every_steps = STEPS_PER_EPOCH // 4
    return c


def table_config(rows: dict, arg: str, final_protocol: str):
    """The config of one row of a paper table: `rows` maps ARG to (model, shortcut, expected result)."""
    if arg not in rows:
        raise ValueError(f"Unknown row {arg!r}; rows: {', '.join(rows)}.")
    model, shortcut, _ = rows[arg]
    c = get_config(f"{model},{shortcut}")
    c.eval.final_protocol = final_protocol
    return c
