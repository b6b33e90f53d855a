"""Top-1 and top-5 error under the paper's test protocols: the `Evaluator`, built once and called many times.

Views of one example are scored by averaging softmax outputs: over the 10 crops, or over the scales (and mirrors) of
the fully-convolutional protocol (`models.ResNet` computes the score map). Padding examples (mask False) count
nowhere, so every example of the split is counted exactly once whatever the batch size or number of hosts. Batch
formats: `resnet_jax.data.protocols`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from resnet_jax import data, datasets, multihost
from resnet_jax.data import on_device
from resnet_jax.data.pipeline import eval_steps
from resnet_jax.data.protocols import MULTISCALE_SIDES
from resnet_jax.errors import InputPipelineError
from resnet_jax.sharding import batch_sharded, check_divisible, replicated
from resnet_jax.train_step import over_runs


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """The errors of one evaluation, with what was evaluated."""

    protocol: str
    split: str
    top1_error: float
    top5_error: float
    examples: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self, name: str = "") -> str:
        """The one line every tool prints for a result."""
        prefix = f"{name} " if name else ""
        return (
            f"{prefix}{self.split} ({self.protocol}): top-1 error {100 * self.top1_error:.2f}% (accuracy "
            f"{100 * (1 - self.top1_error):.2f}%), top-5 error {100 * self.top5_error:.2f}%, {self.examples} "
            "examples"
        )


def summarize(results: Sequence[EvalResult]) -> dict[str, Any]:
    """The final result of a run of one or several members: the errors, and over members their mean, standard
    deviation (n - 1) and best, the paper's "best (mean +- std)"."""
    first = results[0]
    top1 = np.array([r.top1_error for r in results])
    top5 = np.array([r.top5_error for r in results])
    summary = {
        "protocol": first.protocol,
        "split": first.split,
        "examples": first.examples,
        "top1_error": float(top1.mean()),
        "top5_error": float(top5.mean()),
    }
    if len(results) > 1:
        summary.update(
            top1_error_std=float(top1.std(ddof=1)),
            top1_error_best=float(top1.min()),
            top5_error_std=float(top5.std(ddof=1)),
            runs=[r.to_dict() for r in results],
        )
    return summary


def describe_summary(summary: dict[str, Any], name: str = "") -> str:
    """One line for `summarize`'s result: the single result, or the members' mean +- std and best."""
    if "runs" not in summary:
        return EvalResult(
            **{k: summary[k] for k in ("protocol", "split", "top1_error", "top5_error", "examples")}
        ).describe(name)
    prefix = f"{name} " if name else ""
    return (
        f"{prefix}{summary['split']} ({summary['protocol']}), {len(summary['runs'])} runs: top-1 error "
        f"{100 * summary['top1_error']:.2f} +- {100 * summary['top1_error_std']:.2f}% (best "
        f"{100 * summary['top1_error_best']:.2f}%), top-5 error {100 * summary['top5_error']:.2f}%, "
        f"{summary['examples']} examples"
    )


def _error_counts(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    top5 = jax.lax.top_k(scores, 5)[1]
    top1_wrong = top5[:, 0] != labels
    top5_wrong = ~jnp.any(top5 == labels[:, None], axis=-1)
    return {
        "examples": jnp.sum(mask),
        "top1_errors": jnp.sum(top1_wrong & mask),
        "top5_errors": jnp.sum(top5_wrong & mask),
    }


def _view_scores(model: nn.Module, variables: Any, batch: dict) -> jax.Array:
    images = batch["image"]  # [b, V, H, W, 3]
    logits = model.apply(variables, images.reshape(-1, *images.shape[2:]), train=False)
    return jax.nn.softmax(logits).reshape(*images.shape[:2], -1).mean(axis=1)


def mirror_on_canvas(canvas: jax.Array, valid: jax.Array) -> jax.Array:
    """Each image of a batch of canvases mirrored in place: flipped left-right within its own width, still in the
    top-left corner (the mirror's score map then aligns as the image's does)."""
    width = jnp.sum(valid[:, 0, :], axis=1)  # the image's width: the valid pixels of its first row
    columns = jnp.arange(canvas.shape[2])
    source = jnp.clip(width[:, None] - 1 - columns[None, :], 0, canvas.shape[2] - 1)
    mirrored = jnp.take_along_axis(canvas, source[:, None, :, None], axis=2)
    return jnp.where(valid[..., None], mirrored, 0)


def multiscale_scores(model: nn.Module, variables: Any, batch: dict) -> jax.Array:
    """Table 4's fully-convolutional multi-scale testing: for each scale and for the image and its mirror, the class
    scores averaged over the score map's positions, then their softmax averaged over the ten."""
    posteriors = []
    for side in MULTISCALE_SIDES:
        canvas, valid = batch[f"image_{side}"], batch[f"valid_{side}"]
        for image in (canvas, mirror_on_canvas(canvas, valid)):
            scores, positions = model.apply(variables, image, train=False, score_map=True, valid=valid)
            weights = positions[..., None].astype(jnp.float32)
            mean = jnp.sum(scores * weights, (1, 2)) / jnp.maximum(jnp.sum(weights, (1, 2)), 1)
            posteriors.append(jax.nn.softmax(mean))
    return jnp.mean(jnp.stack(posteriors), axis=0)


def error_counts(model: nn.Module, protocol: str, variables: Any, batch: dict) -> dict[str, jax.Array]:
    """{examples, top1_errors, top5_errors} of one batch of `protocol`, summed over its masked-in examples."""
    score = multiscale_scores if protocol == "multiscale" else _view_scores
    return _error_counts(score(model, variables, batch), batch["label"], batch["mask"])


class Evaluator:
    """One protocol on one split, built once: its jitted step and where its batches come from.

    Calling it with a model's variables returns an `EvalResult`, or a list of them for a multi-run (variables with a
    leading axis of `runs`). Each call reads the split anew; nothing is compiled after the first call. A CIFAR split
    with `data.on_device` is held in device memory and evaluated in one dispatch.
    """

    def __init__(
        self,
        model: nn.Module,
        data_config: ml_collections.ConfigDict,
        *,
        protocol: str,
        split: str,
        batch_size: int,
        mesh: Mesh,
        runs: int = 1,
        multi_run: str = "auto",
    ):
        datasets.get(data_config.name).check_protocol(protocol)
        check_divisible(batch_size, mesh, "the evaluation batch size (config.eval.batch_size)")
        self.protocol, self.split = protocol, split
        self._data_config, self._batch_size, self._mesh, self._runs = data_config, batch_size, mesh, runs

        def evaluation_step(variables, batch):
            return error_counts(model, protocol, variables, batch)

        step = over_runs(evaluation_step, runs, (0, None), multi_run)
        self._on_device = data_config.on_device
        if self._on_device:
            self._data = on_device.EvalData.load(data_config, split, batch_size, mesh)

            def evaluate_split(variables, arrays):
                def body(totals, i):
                    batch = on_device.shard_batch(on_device.single_view_batch(arrays, i), mesh)
                    return jax.tree.map(jnp.add, totals, step(variables, batch)), None

                zeros = jax.tree.map(
                    jnp.zeros_like, jax.eval_shape(step, variables, on_device.single_view_batch(arrays, 0))
                )
                return jax.lax.scan(body, zeros, jnp.arange(arrays["labels"].shape[0]))[0]

            self._evaluate_split = jax.jit(evaluate_split, out_shardings=replicated(mesh))
        else:
            self._step = jax.jit(
                step, in_shardings=(replicated(mesh), batch_sharded(mesh)), out_shardings=replicated(mesh)
            )
            self._steps = eval_steps(data_config, split, protocol, batch_size)  # global batches per pass

    @classmethod
    def for_config(
        cls,
        config: ml_collections.ConfigDict,
        model: nn.Module,
        mesh: Mesh,
        *,
        protocol: str | None = None,
        split: str | None = None,
        batch_size: int | None = None,
    ) -> Evaluator:
        """The evaluator of a run's config: its periodic protocol, split and batch size unless others are given."""
        return cls(
            model,
            config.data,
            protocol=protocol or config.eval.protocol,
            split=split or config.eval.split,
            batch_size=batch_size or config.eval.batch_size,
            mesh=mesh,
            runs=config.runs,
            multi_run=config.multi_run,
        )

    def __call__(self, variables: Any) -> EvalResult | list[EvalResult]:
        totals = self._evaluate_split(variables, self._data.arrays) if self._on_device else self._stream(variables)
        totals = jax.tree.map(lambda x: np.asarray(x, np.int64), totals)
        results = [
            EvalResult(self.protocol, self.split, float(t1 / n), float(t5 / n), int(n))
            for n, t1, t5 in zip(
                np.atleast_1d(totals["examples"]),
                np.atleast_1d(totals["top1_errors"]),
                np.atleast_1d(totals["top5_errors"]),
                strict=True,
            )
        ]
        if results[0].examples == 0:
            raise ValueError(f"The {self.split} split yielded no examples to evaluate.")
        return results[0] if self._runs == 1 else results

    def _stream(self, variables: Any) -> dict[str, jax.Array]:
        """Sums the counts over one pass of the grain pipeline. A process whose pipeline fails for good goes on with
        masked-out batches to the end of the pass, so that no process waits alone; then all stop together."""
        batches = data.eval_iterator(
            self._data_config, split=self.split, protocol=self.protocol, global_batch_size=self._batch_size
        )
        totals, failure, last = None, None, None
        try:
            for _ in range(self._steps):
                if failure is None:
                    try:
                        last = next(batches)
                    except InputPipelineError as error:
                        if jax.process_count() == 1 or last is None:
                            raise
                        failure = error
                batch = last if failure is None else {**last, "mask": np.zeros_like(last["mask"])}
                counts = self._step(variables, data.put_on_mesh(batch, self._mesh))
                totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
        finally:
            batches.close()  # stops grain's worker processes
        failing = multihost.first_failing_process(failure is not None)
        if failing is not None:
            raise InputPipelineError(
                f"Process {failing}'s {self.split} input pipeline failed during evaluation"
                + (f": {failure}" if failure else "; see its log.")
            )
        return totals
