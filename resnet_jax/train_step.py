"""The data-parallel train step: one `jax.jit` over a 1-D device mesh, one or many steps and runs per dispatch.

Parameters, BN statistics and optimiser state are replicated; the global batch is sharded along its first axis over
the mesh's data axis, and XLA inserts the gradient all-reduce. BatchNorm statistics follow the model's
`bn_group_size`, so they do not depend on how many devices share the batch.

`make_train_step` is one SGD step on a batch fed from the host. `make_dispatch` is what the training loop calls: k
steps in one `lax.scan`, their batches made by a feed inside the computation (`resnet_jax.data.feeds`), and, for a
multi-run, the step `vmap`ped over N independent runs that share one program (each its own parameters, BN statistics,
data order and augmentation). Metrics are summed on the device over the k steps, so the host waits for nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from resnet_jax.sharding import batch_sharded, replicated


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. In a multi-run every leaf has a leading axis of runs."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState

    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    seed: int,
    mesh: Mesh,
    runs: int = 1,
) -> TrainState:
    """Initialises parameters (He init) and optimiser state directly as replicated arrays on the mesh.

    With `runs` > 1, run k is initialised from seed `seed + k` exactly as a single run of that seed would be, and the
    runs are stacked along a leading axis.
    """

    def init(run_seed) -> TrainState:
        variables = model.init(jax.random.key(run_seed), jnp.zeros((1, *image_shape), jnp.float32))
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables["batch_stats"],
            opt_state=optimizer.init(params),
        )

    if runs == 1:
        return jax.jit(lambda: init(seed), out_shardings=replicated(mesh))()
    return jax.jit(jax.vmap(init), out_shardings=replicated(mesh))(jnp.arange(seed, seed + runs))


MULTI_RUN_MODES = ("auto", "vmap", "unrolled")


def over_runs(f: Callable, runs: int, in_axes: tuple, mode: str = "auto") -> Callable:
    """`f` applied to each of `runs` members whose arguments carry a leading member axis where `in_axes` says 0
    (None: shared by all members; a dict of axes for a dict argument), the results stacked.

    'vmap' batches the members into one computation (a convolution's kernels become one grouped convolution), which
    fills an accelerator that one CIFAR net leaves mostly idle; 'unrolled' computes them one after the other in the
    same program, which XLA:CPU runs about 4x faster than its grouped convolutions (benchmarks/RESULTS.md). 'auto' picks
    'unrolled' on the CPU and 'vmap' elsewhere. The members' results are the same either way, to float rounding.
    """
    if runs == 1:
        return f
    if mode == "auto":
        mode = "unrolled" if jax.default_backend() == "cpu" else "vmap"
    if mode == "vmap":
        return jax.vmap(f, in_axes=in_axes)

    def member(argument, axes, r):
        if axes is None:
            return argument
        if isinstance(axes, dict):
            return {k: member(v, axes.get(k), r) for k, v in argument.items()}
        return jax.tree.map(lambda x: x[r], argument)

    def unrolled(*args):
        outputs = [f(*(member(a, ax, r) for a, ax in zip(args, in_axes, strict=True))) for r in range(runs)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)

    return unrolled


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def sgd_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    batch: dict,
    learning_rate: jax.Array,
    loss_scale: float = 1.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step of the paper's SGD on one batch; metrics are sums over the batch (loss, top-1 errors, examples).

    `loss_scale` multiplies the loss before the backward pass and divides the gradients after it: static loss scaling,
    which keeps float16 gradients from underflowing (mmpretrain's fp16 recipe uses 512; 1 changes nothing).
    """

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"]
        )
        loss = cross_entropy(logits, batch["label"])
        return jnp.mean(loss) * loss_scale, (loss, logits, updates["batch_stats"])

    grads, (loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    if loss_scale != 1.0:
        grads = jax.tree.map(lambda g: g / loss_scale, grads)
    opt_state = state.opt_state
    opt_state.hyperparams["learning_rate"] = learning_rate
    updates, opt_state = optimizer.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": jnp.sum(loss),
        "errors": jnp.sum(jnp.argmax(logits, -1) != batch["label"]),
        "examples": jnp.asarray(loss.shape[0], jnp.int32),
    }
    return TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), metrics


def make_train_step(
    model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh, loss_scale: float = 1.0
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """`step(state, batch, learning_rate) -> (state, metrics)` for one run and one batch fed from the host; `state`
    is donated."""
    return jax.jit(
        lambda state, batch, lr: sgd_step(model, optimizer, state, batch, lr, loss_scale),
        in_shardings=(replicated(mesh), batch_sharded(mesh), replicated(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )


def make_dispatch(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    feed: Any,
    steps: int,
    runs: int = 1,
    loss_scale: float = 1.0,
    multi_run: str = "auto",
) -> Callable[..., tuple[TrainState, dict]]:
    """`dispatch(state, data, inputs, seeds, learning_rates) -> (state, metric sums)`: `steps` SGD steps in one call.

    `learning_rates` is float32 [steps] ([runs, steps] in a multi-run), set by the host-side schedules; `seeds` is the
    run's seed (int32 [runs] in a multi-run). `feed` makes each step's batch inside the computation from `data` and
    `inputs` (`resnet_jax.data.feeds.Feed`). The metric sums cover the `steps` steps (per run). `state` is donated.

    On accelerators the steps run in one `lax.scan`. On the CPU they run as `steps` calls of one jitted step: XLA:CPU
    runs convolution gradients inside a loop body 7-50x slower than outside one (benchmarks/RESULTS.md), and a
    CPU step is long enough that dispatching costs nothing anyway. Both compute the same steps on the same batches.
    """

    def one_step(state: TrainState, data: Any, inputs: Any, seed: jax.Array, learning_rate: jax.Array, i: jax.Array):
        return sgd_step(model, optimizer, state, feed.batch(data, inputs, seed, i), learning_rate, loss_scale)

    def scanned(state: TrainState, data: Any, inputs: Any, seed: jax.Array, learning_rates: jax.Array):
        def body(carry, i):
            state, sums = carry
            state, metrics = one_step(state, data, inputs, seed, learning_rates[i], i)
            return (state, jax.tree.map(jnp.add, sums, metrics)), None

        zeros = {
            "loss": jnp.zeros((), jnp.float32),
            "errors": jnp.zeros((), jnp.int32),
            "examples": jnp.zeros((), jnp.int32),
        }
        (state, sums), _ = jax.lax.scan(body, (state, zeros), jnp.arange(steps))
        return state, sums

    def per_run(f, *extra_axes):
        return over_runs(f, runs, (0, None, feed.inputs_run_axes, 0, 0, *extra_axes), multi_run)

    shardings = {"out_shardings": (replicated(mesh), replicated(mesh)), "donate_argnums": (0,)}
    if steps > 1 and jax.default_backend() != "cpu":
        return jax.jit(per_run(scanned), **shardings)

    step = jax.jit(per_run(one_step, None), **shardings)

    def host_loop(state: TrainState, data: Any, inputs: Any, seeds: Any, learning_rates: np.ndarray):
        sums = None
        for i in range(steps):
            state, metrics = step(state, data, inputs, seeds, learning_rates[..., i], np.int32(i))
            sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        return state, sums

    return host_loop
