"""How to fill a GPU with CIFAR runs: the aggregate training images/s of several runs at once, by how they share it.

    python -m benchmarks.fill --out=fill.json                        # on a GPU (experiments/lease.py runs it)
    python -m benchmarks.fill --out=fill.json --tiny --budget_s=60   # the same code on a CPU, tiny sizes

One CIFAR net at batch 128 keeps a large GPU a few percent busy. For ResNet-20 first, then ResNet-56, it measures the
real training dispatch (`resnet_jax.train.step.make_dispatch`: `--steps_per_dispatch` steps in a `lax.scan`, batches
made on the device from a CIFAR-sized split of random pixels, the paper's step) for:
  one run;  N runs in one program: vmapped, one after the other (`unrolled`), or in a `lax.map` (`map`);
  N independent processes sharing the GPU (each one run, `XLA_PYTHON_CLIENT_MEM_FRACTION` = 0.8 / N, beside this
  process, which allocates only what it uses);
  the best of them in bfloat16 compute; with XLA's CUDA graphs (`--xla_gpu_graph_min_graph_size=1`); with XLA's
  autotuning off (`--xla_gpu_autotune_level=0`).
Each figure is images/s over `--dispatches` dispatches after one untimed (compiling) dispatch, and its compile seconds;
no figure starts that would end after `--budget_s` at the pace of the longest so far. Prints one JSON line per figure,
a Markdown table, and writes `--out`: the figures, the machine, and the choice (the shape with the most images/s for
ResNet-20, in float32: the study uses bfloat16 only once one ResNet-20 seed trained in it on the full schedule ends
within the float32 seeds' spread).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags() -> None:  # at run time: the lease imports `table`
    flags.DEFINE_string("out", "fill.json", "Where to write the figures and the choice (JSON).")
    flags.DEFINE_list("nets", ["resnet20", "resnet56"], "CIFAR nets, the most important first.")
    flags.DEFINE_list("members", ["4", "8"], "Runs per program to measure.")
    flags.DEFINE_list("processes", ["2", "4", "8"], "Independent processes to measure.")
    flags.DEFINE_integer("batch_size", 128, "Global batch of each run.")
    flags.DEFINE_integer("steps_per_dispatch", 100, "Steps per dispatch (the depth study's).")
    flags.DEFINE_integer("dispatches", 3, "Timed dispatches per figure.")
    flags.DEFINE_float("budget_s", 300, "No new figure starts after this many seconds.")
    flags.DEFINE_bool("tiny", False, "CPU-sized: a 1000-image split, 2 steps per dispatch (to try the machinery).")
    flags.DEFINE_string("figures", None, "Only these figures (a JSON list of {net, members, mode[, processes]}).")
    flags.DEFINE_string(
        "worker", None, "Internal: measure one figure given as JSON and print it (a process of a figure)."
    )
    flags.DEFINE_float("start_at", 0.0, "Internal: the wall-clock time a process figure's workers start timing at.")


def measure(net: str, members: int, mode: str, dtype: str = "float32", start_at: float = 0.0) -> dict:
    """One figure, in this process: images/s of `members` runs of `net` sharing one program as `mode`."""
    import jax
    import jax.numpy as jnp

    from resnet_jax import models
    from resnet_jax.core.sharding import make_mesh
    from resnet_jax.data import on_device
    from resnet_jax.data.feeds import DeviceFeed
    from resnet_jax.recipe.members import Members
    from resnet_jax.recipe.optim import make_optimizer
    from resnet_jax.run.state import create_train_state
    from resnet_jax.train.step import make_dispatch

    n = 1000 if FLAGS.tiny else 50_000
    k = 2 if FLAGS.tiny else FLAGS.steps_per_dispatch
    mesh = make_mesh()
    group = FLAGS.batch_size // 2  # the paper's BN per GPU: 2 GPUs
    model = models.create_model(net, num_classes=10, bn_group_size=group, dtype=dtype)
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4)
    runs = Members(count=members, mode=mode if members > 1 else "auto")
    state = create_train_state(model, optimizer, models.spec(net).input_shape, runs, mesh)
    feed = DeviceFeed(on_device.TrainData.random(n, seed=0, mesh=mesh, mean=0.47), FLAGS.batch_size, mesh, runs.seeds)
    dispatch = make_dispatch(model, optimizer, mesh, feed, k, runs, loop="auto" if FLAGS.tiny else "scan")
    learning_rates = np.full((members, k), 0.1, np.float32)
    started = time.perf_counter()
    state, sums = dispatch(state, feed.data, feed.inputs(0), runs.seeds, learning_rates)
    jax.block_until_ready(sums)
    compile_s = time.perf_counter() - started
    if start_at:  # the processes of one figure time the same window
        time.sleep(max(0.0, start_at - time.time()))
    started = time.perf_counter()
    for d in range(1, FLAGS.dispatches + 1):
        state, sums = dispatch(state, feed.data, feed.inputs(d * k), runs.seeds, learning_rates)
    jax.block_until_ready((state, sums))
    seconds = time.perf_counter() - started
    assert bool(jnp.all(jnp.isfinite(sums["loss"]))), "the measured steps diverged"
    images = members * FLAGS.batch_size * k * FLAGS.dispatches
    return {"images": images, "seconds": seconds, "images_per_sec": images / seconds, "compile_s": compile_s}


def worker_env(processes: int, xla_flags: str = "") -> dict[str, str]:
    """The environment of one of `processes` workers sharing the GPU: each preallocates its share of the memory,
    0.8 / processes, beside this process (which allocates only what it uses), with `xla_flags` added."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.8 / processes:.3f}"
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    return env


def _in_processes(net: str, processes: int, xla_flags: str = "", dtype: str = "float32", members: int = 1) -> dict:
    """One figure measured by `processes` processes at once (one when only XLA flags differ)."""
    start_at = time.time() + (10 + 5 * processes if FLAGS.tiny else 90 + 15 * processes)  # once all have compiled
    env = worker_env(processes, xla_flags)
    spec = json.dumps({"net": net, "members": members, "mode": "vmap", "dtype": dtype})
    argv = [sys.executable, "-m", "benchmarks.fill", f"--worker={spec}", f"--start_at={start_at}"]
    argv += [f"--batch_size={FLAGS.batch_size}", f"--steps_per_dispatch={FLAGS.steps_per_dispatch}"]
    argv += [f"--dispatches={FLAGS.dispatches}"] + (["--tiny"] if FLAGS.tiny else [])
    workers = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    figures = [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
    if any(w.returncode for w in workers):
        raise RuntimeError(f"a process of the figure failed: {[w.returncode for w in workers]}")
    images = sum(f["images"] for f in figures)
    seconds = max(f["seconds"] for f in figures)
    return {
        "images": images,
        "seconds": seconds,
        "images_per_sec": images / seconds,
        "compile_s": max(f["compile_s"] for f in figures),
    }


def figures_to_measure(nets: list[str], members: list[int], processes: list[int]) -> list[dict]:
    """The figures, most informative first: every shape for the first net, then the main shapes for the others."""
    first, *others = nets
    shapes = [{"members": 1, "mode": "single"}]
    shapes += [{"members": m, "mode": mode} for m in members for mode in ("vmap", "map")]
    shapes += [{"members": members[0], "mode": "unrolled"}]
    shapes += [{"members": 1, "mode": "processes", "processes": p} for p in processes]
    todo = [{"net": first, **shape} for shape in shapes]
    for net in others:
        todo += [{"net": net, "members": 1, "mode": "single"}]
        todo += [
            {"net": net, "members": members[-1], "mode": "vmap"},
            {"net": net, "members": members[-1], "mode": "map"},
        ]
        todo += [{"net": net, "members": 1, "mode": "processes", "processes": processes[-1]}]
    return todo


def best(figures: list[dict], net: str) -> dict | None:
    """The float32 figure with the most images/s for `net`, plain XLA flags."""
    plain = [
        f for f in figures if f["net"] == net and f.get("dtype", "float32") == "float32" and not f.get("xla_flags")
    ]
    return max(plain, key=lambda f: f["images_per_sec"], default=None)


def run_figure(todo: dict) -> dict:
    if todo["mode"] == "processes" or todo.get("xla_flags"):
        return _in_processes(
            todo["net"],
            todo.get("processes", 1),
            todo.get("xla_flags", ""),
            todo.get("dtype", "float32"),
            todo["members"],
        )
    mode = "auto" if todo["mode"] == "single" else todo["mode"]
    return measure(todo["net"], todo["members"], mode, todo.get("dtype", "float32"))


def main(argv):
    del argv
    if FLAGS.worker:
        spec = json.loads(FLAGS.worker)
        print(json.dumps(measure(spec["net"], spec["members"], spec["mode"], spec["dtype"], FLAGS.start_at)))
        return
    # This process measures the in-program figures, then starts the process figures' workers: it must not keep the
    # 75% of the GPU's memory JAX takes by default, or the workers' shares would not fit beside it.
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if FLAGS.tiny:
        import jax

        jax.config.update("jax_platforms", "cpu")
    from resnet_jax.core.machine import describe

    started, figures = time.perf_counter(), []
    todo = figures_to_measure(FLAGS.nets, [int(m) for m in FLAGS.members], [int(p) for p in FLAGS.processes])
    extras_done = FLAGS.figures is not None
    if FLAGS.figures is not None:
        todo = json.loads(FLAGS.figures)
    longest = 0.0  # no figure starts that the longest so far, once and a half, would carry past the budget
    while todo and time.perf_counter() - started + 1.5 * longest < FLAGS.budget_s:
        figure = todo.pop(0)
        figure_started = time.perf_counter()
        try:
            figure |= run_figure(figure)
        except Exception as error:  # noqa: BLE001 - a shape that does not fit (memory) is a figure too
            figure |= {"error": repr(error)[:300]}
        longest = max(longest, time.perf_counter() - figure_started)
        figures.append(figure)
        print(json.dumps(figure), flush=True)
        top = best([f for f in figures if "error" not in f], FLAGS.nets[0])
        if not extras_done and top is not None and not any(f["net"] == FLAGS.nets[0] for f in todo):
            extras_done = True  # the first net measured: its best shape in bfloat16 and with other XLA flags
            extra = {k: top[k] for k in ("net", "members", "mode") if k in top} | {"processes": top.get("processes", 1)}
            todo[:0] = [
                {**extra, "dtype": "bfloat16"},
                {**extra, "xla_flags": "--xla_gpu_graph_min_graph_size=1"},
                {**extra, "xla_flags": "--xla_gpu_autotune_level=0"},
            ]
    measured = [f for f in figures if "error" not in f]
    choice = best(measured, FLAGS.nets[0])
    single = [f["images_per_sec"] for f in measured if choice and f["net"] == choice["net"] and f["mode"] == "single"]
    result = {"machine": describe(), "figures": figures, "not_measured": todo, "choice": None}
    if choice is not None:
        result["choice"] = {
            "mode": choice["mode"],
            "members": choice["members"],
            "processes": choice.get("processes", 1),
            "dtype": "float32",
            "speedup_over_one_run": choice["images_per_sec"] / max(single) if single else None,
        }
    with open(FLAGS.out, "w") as f:
        json.dump(result, f, indent=2)
    print(table(result))


def table(result: dict) -> str:
    """The figures as Markdown, each with its speed-up over one run of its net."""
    single = {f["net"]: f["images_per_sec"] for f in result["figures"] if f["mode"] == "single" and "error" not in f}
    lines = [
        "| net | shape | dtype | XLA flags | images/s | x one run | compile s |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for f in result["figures"]:
        shape = f"{f.get('processes', 1)} processes" if f["mode"] == "processes" else f"{f['members']} x {f['mode']}"
        if "error" in f:
            lines.append(
                f"| {f['net']} | {shape} | {f.get('dtype', 'float32')} | {f.get('xla_flags', '')} | "
                f"failed: {f['error'][:60]} | | |"
            )
            continue
        ratio = f["images_per_sec"] / single[f["net"]] if f["net"] in single else float("nan")
        lines.append(
            f"| {f['net']} | {shape} | {f.get('dtype', 'float32')} | {f.get('xla_flags', '')} | "
            f"{f['images_per_sec']:,.0f} | {ratio:.2f} | {f['compile_s']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
