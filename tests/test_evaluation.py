"""Scoring under the test protocols: views averaged as softmax scores, padding never counted, results summarised."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resnet_jax.core.errors import ConfigError
from resnet_jax.core.sharding import make_mesh
from resnet_jax.data import on_device, pipeline, protocols
from resnet_jax.data.pipeline import eval_iterator
from resnet_jax.eval import scores
from resnet_jax.eval.device import DeviceEvaluator
from resnet_jax.eval.evaluator import evaluator_for
from resnet_jax.eval.results import EvalResult, describe_summary, results_from_counts, summarize
from resnet_jax.eval.scores import error_counts, multiscale_scores
from resnet_jax.eval.streamed import StreamedEvaluator
from resnet_jax.models import create_model
from resnet_jax.recipe.members import Members
from tests.support.data import opened
from tests.support.nets import noisy_batch_stats, tiny_resnet


def test_ten_views_average_softmax_scores_and_padding_is_masked():
    model = create_model("resnet18", num_classes=7)
    x = jax.random.normal(jax.random.key(0), (4, 10, 64, 64, 3))
    variables = model.init(jax.random.key(1), x[:, 0])
    softmax = jax.nn.softmax(model.apply(variables, x.reshape(40, 64, 64, 3))).reshape(4, 10, 7).mean(1)
    # Scored one view at a time (bounded memory: the model sees batches of 3, never all 30 images at once), the same.
    np.testing.assert_allclose(scores._view_scores(model, variables, {"image": x}), softmax, rtol=1e-5, atol=1e-7)
    program = str(jax.make_jaxpr(lambda v, images: scores._view_scores(model, v, {"image": images}))(variables, x))
    assert "scan" in program and "f32[40,64,64,3]" not in program
    ranked = np.argsort(-np.asarray(softmax), axis=1)
    # example 0: label = its top class; 1: its 3rd (top-5 right, top-1 wrong); 2: its 7th (both wrong); 3: padding
    labels = jnp.array([ranked[0, 0], ranked[1, 2], ranked[2, 6], ranked[3, 6]], jnp.int32)
    batch = {"image": x, "label": labels, "mask": jnp.array([True, True, True, False])}
    counts = jax.jit(lambda v, b: error_counts(model, "10crop", v, b))(variables, batch)
    assert {k: int(v) for k, v in counts.items()} == {"examples": 3, "top1_errors": 2, "top5_errors": 1}


def test_a_mirror_on_a_canvas_is_the_image_flipped_where_it_lies():
    canvas = np.zeros((2, 4, 6, 3), np.float32)
    valid = np.zeros((2, 4, 6), bool)
    images = [np.random.default_rng(i).random((h, w, 3), np.float32) for i, (h, w) in enumerate([(3, 4), (4, 6)])]
    for i, image in enumerate(images):
        canvas[i, : image.shape[0], : image.shape[1]] = image
        valid[i, : image.shape[0], : image.shape[1]] = True
    mirrored = np.asarray(scores.mirror_on_canvas(jnp.asarray(canvas), jnp.asarray(valid)))
    for i, image in enumerate(images):
        expected = np.zeros_like(canvas[i])
        expected[: image.shape[0], : image.shape[1]] = image[:, ::-1]
        np.testing.assert_array_equal(mirrored[i], expected)


@pytest.mark.parametrize("in_memory", [True, False])
def test_evaluator_counts_every_example_once_and_agrees_with_a_direct_count(cifar_slice_data_dir, in_memory):
    dataset, cfg = opened("cifar10", cifar_slice_data_dir, on_device=in_memory)
    model = create_model("resnet20", num_classes=10, bn_momentum=0.0)
    pixels, labels = on_device.load_split(dataset, "test")
    images = pixels.astype(np.float32) / 255 - dataset.mean_image
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    # BN statistics of the images themselves, so that an untrained net's predictions differ between images.
    _, stats = model.apply(variables, images, train=True, mutable=["batch_stats"])
    variables = {"params": variables["params"], **stats}
    evaluator = (DeviceEvaluator if in_memory else StreamedEvaluator)(
        model, dataset, cfg, protocol="single", split="test", batch_size=96, mesh=make_mesh(), members=Members()
    )
    (result,) = evaluator(jax.tree.map(lambda x: x[None], variables))  # one member
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
    assert summary["runs"][0] == {
        "protocol": "single", "split": "test", "top1_error": 0.08, "top5_error": 0.008, "examples": 10_000
    }  # fmt: skip
    assert summarize(results[:2])["top1_error_std"] == pytest.approx(0.01 / 2**0.5)  # two runs have a spread too
    assert "runs" not in summarize(results[:1])
    assert describe_summary(summarize(results[:1])) == results[0].describe()
    assert results[0].describe("resnet20") == (
        "resnet20 test (single): top-1 error 8.00% (accuracy 92.00%), top-5 error 0.80%, 10000 examples"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):  # a result is a record: nothing edits it after the fact
        results[0].top1_error = 0.0


def test_results_from_counts_are_each_member_s_error_rates():
    counts = {"examples": [[500], [400]], "top1_errors": [[50], [100]], "top5_errors": [[5], [20]]}
    first, second = results_from_counts("single", "test", counts)
    assert (first.top1_error, first.top5_error, first.examples) == (0.1, 0.01, 500)
    assert (second.top1_error, second.top5_error, second.examples) == (0.25, 0.05, 400)
    assert results_from_counts("single", "test", {k: [1] for k in counts})[0].examples == 1
    with pytest.raises(ValueError, match="The test split yielded no examples"):
        results_from_counts("single", "test", {k: [0] for k in counts})
    with pytest.raises(ValueError, match="zip"):  # counts of another number of members: never silently cut
        results_from_counts("single", "test", {**counts, "top5_errors": [[5]]})


def test_multiscale_protocol_scores_each_image_as_a_pass_over_it_alone_would(varied_imagenet, monkeypatch):
    dataset, cfg, count = varied_imagenet
    # Two of the five scales keep this test to a CPU's seconds; which scales are averaged changes nothing here.
    monkeypatch.setattr(protocols, "MULTISCALE_SIDES", (224, 384))
    monkeypatch.setattr(scores, "MULTISCALE_SIDES", (224, 384))
    model = tiny_resnet(num_classes=7)
    variables = noisy_batch_stats(model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    batches = list(eval_iterator(dataset, cfg, split="validation", protocol="multiscale", global_batch_size=2))
    assert sum(int(b["mask"].sum()) for b in batches) == count == 3
    shapes = {tuple(b["image_224"].shape[1:3]) for b in batches}
    assert len(shapes) == len({protocols.bucket_of(*s) for s in dataset.image_sizes("validation")}) == 3
    for batch in batches:
        ours = np.asarray(multiscale_scores(model, variables, batch))
        for k in np.flatnonzero(batch["mask"]):
            posteriors = []
            for side in protocols.MULTISCALE_SIDES:
                valid = batch[f"valid_{side}"][k]
                height, width = valid.sum(0).max(), valid.sum(1).max()
                image = batch[f"image_{side}"][k, :height, :width][None]
                for view in (image, image[:, :, ::-1]):  # the image alone, and its mirror
                    map_, _ = model.apply(variables, view, score_map=True)
                    posteriors.append(jax.nn.softmax(np.asarray(map_).mean((1, 2))))
            np.testing.assert_allclose(ours[k], np.mean(posteriors, 0)[0], rtol=1e-4, atol=1e-6)


def test_multiscale_scores_slices_of_the_batch_as_it_scores_it_whole(varied_imagenet, monkeypatch):
    """The larger scales are scored a slice of the batch at a time, within the pixels of one 224 view per example:
    the same posteriors as the whole batch at once (within float32 rounding), in the batch's order."""
    assert scores.slices_for(256, 640, 1280) == 32 and scores.slices_for(256, 640, 1280, devices=8) == 32
    assert scores.slices_for(256, 224, 224) == 1 and scores.slices_for(6, 480, 640) == 6  # 6 examples: 1 each
    assert scores.slices_for(2, 224, 224) == 1 and scores.slices_for(2, 224, 448) == 2
    dataset, cfg, count = varied_imagenet
    monkeypatch.setattr(protocols, "MULTISCALE_SIDES", (224, 384))
    monkeypatch.setattr(scores, "MULTISCALE_SIDES", (224, 384))
    model = tiny_resnet(num_classes=7)
    variables = noisy_batch_stats(model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    batch = next(iter(eval_iterator(dataset, cfg, split="validation", protocol="multiscale", global_batch_size=4)))
    assert [scores.slices_for(4, *batch[f"image_{side}"].shape[1:3]) for side in (224, 384)] == [2, 4]
    sliced = jax.jit(lambda v, b: multiscale_scores(model, v, b))
    assert "scan" in str(jax.make_jaxpr(lambda v, b: multiscale_scores(model, v, b))(variables, batch))
    ours = np.asarray(sliced(variables, batch))
    monkeypatch.setattr(scores, "slices_for", lambda *args, **kwargs: 1)
    whole = np.asarray(jax.jit(lambda v, b: multiscale_scores(model, v, b))(variables, batch))
    np.testing.assert_allclose(ours, whole, rtol=1e-5, atol=1e-7)
    assert len(set(np.argmax(whole, 1).tolist())) > 1 or not np.allclose(whole[0], whole[1])  # the examples differ


def test_streamed_evaluation_batches_fit_host_memory_with_the_same_scores(varied_imagenet, monkeypatch, caplog):
    """A 10-crop batch of 256 ImageNet images is 1.4 GiB and several are in flight: where they would not fit in a
    third of the memory available, the batch is made smaller (one log line) and the grain workers fewer; the scores
    are the same; ConfigError when not even one example per device fits."""
    dataset, cfg, count = varied_imagenet
    per_example = pipeline.example_bytes(pipeline.eval_view(dataset, cfg, "10crop"), "10crop")
    assert per_example == 10 * 224 * 224 * 3 * 4 + 9  # the views, label, mask and index
    multiscale = pipeline.example_bytes(pipeline.eval_view(dataset, cfg, "multiscale"), "multiscale")
    assert 20 * 2**20 < multiscale < 25 * 2**20  # the five canvases of the widest bucket and their masks
    room_for = lambda n: 3 * pipeline.in_flight(cfg, 0) * per_example * n  # noqa: E731  (bytes available)
    monkeypatch.setattr(pipeline, "available_memory", lambda: room_for(6.5))
    with caplog.at_level(logging.INFO):
        assert pipeline.eval_batch_that_fits(dataset, cfg, "10crop", 256, multiple=4) == 4
    assert "evaluating in batches of 4" in caplog.text
    assert pipeline.eval_batch_that_fits(dataset, cfg, "10crop", 256, multiple=1) == 6
    assert pipeline.eval_batch_that_fits(dataset, cfg, "10crop", 5, multiple=1) == 5
    with pytest.raises(ConfigError, match="10crop evaluation batch of 8 .*more than a third"):
        pipeline.eval_batch_that_fits(dataset, cfg, "10crop", 256, multiple=8)
    eight = ml_collections.ConfigDict({"worker_count": 8, "prefetch": 2, "read_threads": 2})
    assert pipeline.in_flight(eight, 8) == 50 and pipeline.in_flight(eight, 0) == 6
    # batches of one example: a third of the memory holds 6.5 * 6 = 39 of them, 2 + 6 per worker
    assert pipeline.eval_workers(eight, "10crop", per_example) == 6

    model = tiny_resnet(num_classes=7)
    variables = jax.tree.map(
        lambda x: x[None], noisy_batch_stats(model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    )

    def evaluate():
        evaluator = evaluator_for(
            cfg, model, dataset, make_mesh(), Members(), protocol="10crop", split="validation", batch_size=3
        )
        return evaluator.batch_size, evaluator(variables)[0]

    monkeypatch.setattr(pipeline, "available_memory", lambda: room_for(2.5))
    small, fitted = evaluate()
    monkeypatch.setattr(pipeline, "available_memory", lambda: room_for(100))
    whole, unfitted = evaluate()
    assert (small, whole) == (2, 3) and fitted.examples == unfitted.examples == count
    assert (fitted.top1_error, fitted.top5_error) == (unfitted.top1_error, unfitted.top5_error)
