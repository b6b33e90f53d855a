"""Our full train step against PyTorch eager on the same CPU, the same nets, the same batch: the CPU gap.

    python -m benchmarks.cpu_vs_torch [--rounds=2] [--steps=8] [--dtypes=float32,bfloat16] [--nets=resnet20,resnet50]
        [--profile]

CIFAR ResNet-20 at batch 128 (akamaster's net in PyTorch: the same option-A ResNet) and ResNet-50 v1.5 at batch 16
(torchvision's, channels-last), forward + backward + SGD with momentum and weight decay, on synthetic batches
already in memory; in float32, and in bfloat16: ours built with `dtype='bfloat16'` (bfloat16 activations, float32
parameters and updates), PyTorch's under `torch.autocast('cpu', dtype=torch.bfloat16)` (its one-line mixed
precision, the same split). Ours runs as a user gets it (`conv_impl` and `bn_impl` 'auto': oneDNN's convolutions and
training batch norms on a single-device CPU program where oneDNN loads) and, for the record, with XLA's own kernels
(both 'xla'). The three alternate, `--rounds` times, so that all see the same machine state; each figure is the best
of its round's steps after a warm-up. `--profile` adds where one ResNet-20 step spends its time: each convolution
shape's forward, input gradient and kernel gradient, and each batch norm shape's forward and backward, timed alone
with XLA's and with oneDNN's kernels, PyTorch's own profile of a step by operator, and 4 ResNet-20 steps with
oneDNN's kernels in one `lax.scan` against 4 calls of one step (`resnet_jax.kernels.conv.scans_well`). The last line
is a JSON object with `resnet20_ratio` and `resnet50_ratio` (ours over PyTorch's images per second, float32: above 1
we are faster), `resnet20_bf16_ratio` and `resnet50_bf16_ratio` (the same in bfloat16), the same with XLA's kernels
(`*_xla_ratio`), what 'auto' chose, and the machine.
"""

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags

from experiments.torch_reference import CifarResNet, TorchvisionResNet, TvBottleneck
from resnet_jax.core.machine import describe
from resnet_jax.core.sharding import make_mesh
from resnet_jax.kernels import batch_norm
from resnet_jax.kernels.conv import conv_general_dilated_for, resolve
from resnet_jax.models import create_model, spec
from resnet_jax.recipe.members import Members
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.run.state import create_train_state, member
from resnet_jax.train.step import make_train_step, sgd_step

flags.DEFINE_integer("rounds", 2, "Alternating rounds of both frameworks.")
flags.DEFINE_integer("steps", 8, "Timed steps per framework and round (after warm-up).")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes to compare (float32, bfloat16).")
flags.DEFINE_list("nets", ["resnet20", "resnet50"], "Nets to compare (resnet20, resnet50).")
flags.DEFINE_bool("profile", False, "Also print where a ResNet-20 step spends its time, per operation.")
flags.DEFINE_bool("tiny", False, "Batch 8 and 2 steps: checks that the script runs, measures nothing.")
FLAGS = flags.FLAGS

NETS = {  # name: (our model and options, the PyTorch net, batch)
    "resnet20": (("resnet20", {}), lambda: CifarResNet(3), 128),
    "resnet50": (("resnet50", {"stride_on_3x3": True}), lambda: TorchvisionResNet(TvBottleneck, [3, 4, 6, 3]), 16),
}


def _best_step_seconds(step, steps: int) -> float:
    step()  # warm-up (and, for ours, the first call after compilation)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def _our_setup(name: str, options: dict, batch_size: int, impl: str = "auto", dtype: str = "float32"):
    """(model, optimizer, one run's train state, a synthetic batch) for net `name`, as both timings of ours use them:
    `impl` is the net's `conv_impl` and `bn_impl`, its BN statistics over the whole batch, unless `options` say
    otherwise."""
    options = {"bn_group_size": None, "conv_impl": impl, "bn_impl": impl, **options}
    model = create_model(name, num_classes=spec(name).num_classes, dtype=dtype, **options)
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4)
    state = member(create_train_state(model, optimizer, spec(name).input_shape, Members(), make_mesh()))
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(batch_size, *spec(name).input_shape)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, spec(name).num_classes, batch_size), jnp.int32),
    }
    return model, optimizer, state, batch


def ours(name: str, options: dict, batch_size: int, impl: str = "auto", dtype: str = "float32"):
    """A function that runs one of our train steps and waits for it."""
    model, optimizer, state, batch = _our_setup(name, options, batch_size, impl, dtype)
    step = make_train_step(model, optimizer, make_mesh())
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], batch, jnp.float32(0.1))
        jax.block_until_ready(metrics)

    return run


def theirs(make_net, batch_size: int, shape: tuple[int, int, int], num_classes: int, dtype: str = "float32"):
    """A function that runs one PyTorch eager train step (channels-last, as oneDNN prefers; bfloat16 autocast)."""
    torch.manual_seed(0)
    net = make_net().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    h, w, c = shape
    images = torch.randn(batch_size, c, h, w).to(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch_size,))

    def run():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = F.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()

    return run


def compare(name: str, dtype: str) -> dict:
    (model_name, options), make_net, batch_size = NETS[name]
    batch_size = 8 if FLAGS.tiny else batch_size
    steps = 2 if FLAGS.tiny else FLAGS.steps
    shape, classes = spec(model_name).input_shape, spec(model_name).num_classes
    ours_step = ours(model_name, options, batch_size, "auto", dtype)
    xla_step = ours(model_name, options, batch_size, "xla", dtype)
    torch_step = theirs(make_net, batch_size, shape, classes, dtype)
    rounds = []
    for _ in range(1 if FLAGS.tiny else FLAGS.rounds):
        a = batch_size / _best_step_seconds(ours_step, steps)
        x = batch_size / _best_step_seconds(xla_step, steps)
        b = batch_size / _best_step_seconds(torch_step, steps)
        rounds.append(
            {
                "ours_img_s": round(a, 1),
                "ours_xla_kernels_img_s": round(x, 1),
                "torch_img_s": round(b, 1),
                "ratio": round(a / b, 3),
                "xla_ratio": round(x / b, 3),
            }
        )
        print(json.dumps({"net": name, "dtype": dtype, "batch": batch_size, **rounds[-1]}), flush=True)
    median = {key: float(np.median([r[key] for r in rounds])) for key in ("ratio", "xla_ratio")}
    return {"rounds": rounds, **median}


def _conv_parts(stride: int, conv_impl: str) -> dict:
    """A 3x3 convolution's forward, input gradient and kernel gradient, each jitted alone."""
    conv_general_dilated = conv_general_dilated_for(conv_impl)

    def conv(x, w):
        dims = ("NHWC", "HWIO", "NHWC")
        return conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=dims)

    return {
        "forward": jax.jit(lambda x, w, g: conv(x, w)),
        "input gradient": jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
        "kernel gradient": jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
    }


def _batch_norm_parts(impl: str) -> dict:
    """A training batch norm's forward and backward (statistics over the whole batch, as the nets here), jitted."""

    def norm(x):
        return batch_norm.normalize(
            x, jnp.ones(x.shape[-1]), jnp.zeros(x.shape[-1]), group_size=x.shape[0], epsilon=1e-5, dtype=x.dtype,
            impl=impl,
        )[0]  # fmt: skip

    return {
        "forward": jax.jit(lambda x, g: norm(x)),
        "backward": jax.jit(lambda x, g: jax.vjp(norm, x)[1](g)[0]),
    }


def _wait(f, *args) -> None:
    jax.block_until_ready(f(*args))


def _emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def profile_resnet20(batch_size: int = 128, repeats: int = 5, dtype: str = "float32") -> None:
    """Where a ResNet-20 step's time goes in `dtype`: our convolutions timed alone per shape and direction, the rest
    of our step, and PyTorch's operators (under bfloat16 autocast for bfloat16)."""
    rng = np.random.default_rng(0)
    # (input side, in channels, out channels, stride, how many in the net)
    shapes = [(32, 3, 16, 1, 1), (32, 16, 16, 1, 6), (32, 16, 32, 2, 1), (16, 32, 32, 1, 5), (16, 32, 64, 2, 1)]
    shapes.append((8, 64, 64, 1, 5))
    impls = ("xla", "onednn") if resolve("auto") == "onednn" else ("xla",)
    for impl in impls:
        total = {"forward": 0.0, "input gradient": 0.0, "kernel gradient": 0.0, "bn forward": 0.0, "bn backward": 0.0}
        for side, cin, cout, stride, count in shapes:
            x = jnp.asarray(rng.normal(size=(batch_size, side, side, cin)), dtype)
            w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.1, dtype)
            parts = _conv_parts(stride, impl)
            g = parts["forward"](x, w, None)
            row = {}
            for part, f in parts.items():
                seconds = _best_step_seconds(functools.partial(_wait, f, x, w, g), repeats)
                row[part] = round(1e3 * seconds, 2)
                total[part] += count * seconds
            _emit(
                profile=f"ours ({impl}, {dtype}), one convolution alone, ms",
                shape=f"{side}x{side}x{cin}->{cout}/s{stride}",
                count=count,
                **row,
            )
        for side, channels, count in ((32, 16, 7), (16, 32, 6), (8, 64, 6)):  # (side, channels, how many in the net)
            x = jnp.asarray(rng.normal(size=(batch_size, side, side, channels)), dtype)
            row = {}
            for part, f in _batch_norm_parts(impl).items():
                seconds = _best_step_seconds(functools.partial(_wait, f, x, x), repeats)
                row[part] = round(1e3 * seconds, 2)
                total[f"bn {part}"] += count * seconds
            _emit(profile=f"ours ({impl}, {dtype}), one batch norm alone, ms", shape=f"{side}x{side}x{channels}",
                  count=count, **row)  # fmt: skip
        whole = _best_step_seconds(ours("resnet20", {}, batch_size, impl, dtype), repeats)
        rest = whole - sum(total.values())
        in_ms = {k: round(1e3 * v, 1) for k, v in total.items()}
        _emit(
            profile=f"ours ({impl}, {dtype}), one step, ms",
            step=round(1e3 * whole, 1),
            **in_ms,
            everything_else=round(1e3 * rest, 1),
        )
    torch_step = theirs(lambda: CifarResNet(3), batch_size, (32, 32, 3), 10, dtype)
    torch_step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            torch_step()
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]:
        ms = round(e.self_cpu_time_total / 1e3 / repeats, 2)
        _emit(profile=f"torch operator ({dtype}), self ms per step", op=e.key, ms=ms)


def scan_against_calls(batch_size: int, steps: int = 4, repeats: int = 3) -> None:
    """Seconds per step of `steps` ResNet-20 steps in one `lax.scan` and as `steps` calls of one jitted step."""
    model, optimizer, state, batch = _our_setup("resnet20", {}, batch_size)
    one = jax.jit(lambda state: sgd_step(model, optimizer, state, batch, jnp.float32(0.1)))
    body = lambda state, _: one(state)  # noqa: E731
    scanned = jax.jit(lambda state: jax.lax.scan(body, state, None, length=steps))

    def calls():
        s = state
        for _ in range(steps):
            s, metrics = one(s)
        jax.block_until_ready(metrics)

    per_call = _best_step_seconds(calls, repeats) / steps
    per_scanned = _best_step_seconds(lambda: jax.block_until_ready(scanned(state)), repeats) / steps
    _emit(
        profile=f"ours ({resolve('auto')}), {steps} steps, ms per step",
        calls=round(1e3 * per_call, 1),
        scan=round(1e3 * per_scanned, 1),
        scan_over_calls=round(per_scanned / per_call, 2),
    )


def main(argv):
    del argv
    results = {}
    for dtype in FLAGS.dtypes:
        suffix = "" if dtype == "float32" else "_bf16" if dtype == "bfloat16" else f"_{dtype}"
        results.update({f"{name}{suffix}": compare(name, dtype) for name in FLAGS.nets})
    if FLAGS.profile:
        for dtype in FLAGS.dtypes:
            profile_resnet20(8 if FLAGS.tiny else 128, 1 if FLAGS.tiny else 5, dtype)
        if resolve("auto") == "onednn":  # XLA's own convolutions are 7-50x slower in a scan: not worth the wait
            scan_against_calls(8 if FLAGS.tiny else 128, 2 if FLAGS.tiny else 4, 1 if FLAGS.tiny else 3)
    summary = {f"{name}_ratio": r["ratio"] for name, r in results.items()}
    summary.update({f"{name}_xla_ratio": r["xla_ratio"] for name, r in results.items()})
    summary["conv_impl"] = resolve("auto")
    summary["bn_impl"] = batch_norm.resolve("auto")
    print(json.dumps({**summary, "torch": torch.__version__, "torch_threads": torch.get_num_threads(), **describe()}))


if __name__ == "__main__":
    app.run(main)
