"""Scoring under the test protocols: views averaged as softmax scores, padding never counted."""

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.evaluation import evaluate, make_eval_step
from resnet_jax.models import create_model
from resnet_jax.sharding import make_mesh


def test_ten_views_average_softmax_scores_and_padding_is_masked():
    model = create_model("resnet18", num_classes=7)
    x = jax.random.normal(jax.random.key(0), (3, 10, 64, 64, 3))
    variables = model.init(jax.random.key(1), x[:, 0])
    scores = jax.nn.softmax(model.apply(variables, x.reshape(30, 64, 64, 3))).reshape(3, 10, 7).mean(1)
    ranked = np.argsort(-np.asarray(scores), axis=1)
    # example 0: label = its top class; 1: its 3rd (top-5 right, top-1 wrong); 2: padding with a wrong label
    labels = jnp.array([ranked[0, 0], ranked[1, 2], ranked[2, 6]], jnp.int32)
    batch = {"image": x, "label": labels, "mask": jnp.array([True, True, False])}
    counts = make_eval_step(model, "10crop", make_mesh())(variables, batch)
    assert {k: int(v) for k, v in counts.items()} == {"examples": 2, "top1_errors": 1, "top5_errors": 0}


def test_evaluate_sums_over_batches():
    model = create_model("resnet20", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(4, 1, 32, 32, 3)).astype(np.float32),
                "label": rng.integers(0, 10, 4).astype(np.int32), "mask": np.array([True, True, True, m])}
               for m in (True, False)]
    result = evaluate(model, variables, batches, "single", make_mesh())
    assert result["examples"] == 7 and 0 <= result["top5_error"] <= result["top1_error"] <= 1
