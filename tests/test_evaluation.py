"""Scoring under the test protocols: views averaged as softmax scores, padding never counted, results summarised."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.data import on_device, sources
from resnet_jax.evaluation import EvalResult, Evaluator, describe_summary, error_counts, summarize
from resnet_jax.models import create_model
from resnet_jax.sharding import make_mesh
from tests.conftest import data_config


def test_ten_views_average_softmax_scores_and_padding_is_masked():
    model = create_model("resnet18", num_classes=7)
    x = jax.random.normal(jax.random.key(0), (3, 10, 64, 64, 3))
    variables = model.init(jax.random.key(1), x[:, 0])
    scores = jax.nn.softmax(model.apply(variables, x.reshape(30, 64, 64, 3))).reshape(3, 10, 7).mean(1)
    ranked = np.argsort(-np.asarray(scores), axis=1)
    # example 0: label = its top class; 1: its 3rd (top-5 right, top-1 wrong); 2: padding with a wrong label
    labels = jnp.array([ranked[0, 0], ranked[1, 2], ranked[2, 6]], jnp.int32)
    batch = {"image": x, "label": labels, "mask": jnp.array([True, True, False])}
    counts = jax.jit(lambda v, b: error_counts(model, "10crop", v, b))(variables, batch)
    assert {k: int(v) for k, v in counts.items()} == {"examples": 2, "top1_errors": 1, "top5_errors": 0}


@pytest.mark.parametrize("in_memory", [True, False])
def test_evaluator_counts_every_example_once_and_agrees_with_a_direct_count(cifar_slice_data_dir, in_memory):
    cfg = data_config("cifar10", cifar_slice_data_dir, on_device=in_memory)
    model = create_model("resnet20", num_classes=10, bn_momentum=0.0)
    pixels, labels = on_device.load_split(cfg, "test")
    images = pixels.astype(np.float32) / 255 - sources.mean_image(cfg)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    # BN statistics of the images themselves, so that an untrained net's predictions differ between images.
    _, stats = model.apply(variables, images, train=True, mutable=["batch_stats"])
    variables = {"params": variables["params"], **stats}
    result = Evaluator(model, cfg, protocol="single", split="test", batch_size=96, mesh=make_mesh())(variables)
    assert result.examples == 500 and result.protocol == "single" and result.split == "test"  # 96 does not divide it
    predictions = np.argmax(np.asarray(model.apply(variables, images)), -1)
    assert len(set(predictions.tolist())) > 2
    assert result.top1_error == np.mean(predictions != labels)


def test_multi_run_results_are_summarised_as_mean_std_and_best():
    results = [EvalResult("single", "test", e, e / 10, 10_000) for e in (0.08, 0.09, 0.10)]
    summary = summarize(results)
    assert summary["top1_error"] == pytest.approx(0.09) and summary["top1_error_std"] == pytest.approx(0.01)
    assert summary["top1_error_best"] == 0.08 and len(summary["runs"]) == 3
    assert describe_summary(summary, "resnet20") == (
        "resnet20 test (single), 3 runs: top-1 error 9.00 +- 1.00% (best 8.00%), top-5 error 0.90%, 10000 examples"
    )
    assert "runs" not in summarize(results[:1])
    assert describe_summary(summarize(results[:1])) == results[0].describe()
