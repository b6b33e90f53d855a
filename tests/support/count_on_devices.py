"""How many test examples an evaluation on all devices counts: `python -m tests.support.count_on_devices DATA_DIR
BATCH` prints JSON {devices, batch_used, examples}. The model is a tiny stand-in (a linear layer over the mean
colour): what is measured is the evaluator's batching and masking, not a net."""

from __future__ import annotations

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.core.sharding import make_mesh
from resnet_jax.data.options import default_data_config
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.eval.evaluator import evaluator_for
from resnet_jax.recipe.members import Members


class _MeanColour(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def main(data_dir: str, batch: str) -> None:
    config = default_data_config("cifar10")
    config.data_dir = data_dir
    dataset, model, mesh = PreparedDataset.open(config), _MeanColour(), make_mesh()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    evaluator = evaluator_for(
        config, model, dataset, mesh, Members(), protocol="single", split="test", batch_size=int(batch)
    )
    (result,) = evaluator(jax.tree.map(lambda x: np.asarray(x)[None], variables))
    print(json.dumps({"devices": mesh.size, "batch_used": evaluator.batch_size, "examples": result.examples}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
