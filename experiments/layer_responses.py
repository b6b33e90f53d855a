"""Figure 7: standard deviations of the layer responses of trained CIFAR-10 nets.

    python -m experiments.layer_responses \
        --workdirs=workdirs/depth_study/plain20_seed0,workdirs/depth_study/resnet20_seed0,... \
        --output=workdirs/depth_study/figure7
    python -m experiments.layer_responses --from_csv=a/figure7.csv,b/figure7.csv --output=figure7   # redraw, merged

A response is the output of a 3x3 convolution after its BatchNorm, before the ReLU and the addition of the shortcut
(Section 4.2). For each such layer we take the standard deviation of each channel over the test set (all images and
positions) and average it over the channels. Writes <output>.csv (net, layer index, layer, std) and <output>.png
(top: in layer order; bottom: sorted in descending order), as in the paper. For a workdir of several runs
(`config.runs`), the run of its first seed is measured.

The BNs normalise with their moving averages (the trained net as it is tested; the default), or with
`--statistics=batch` with each group's own statistics, as in training (groups of training's size; a last incomplete
group is left out: 9,984 of CIFAR-10's 10,000 test images). With the batch's statistics a response's std is, by
construction, its BN's mean |scale| over the channels (times sqrt(var / (var + epsilon))), so the two kinds differ
where the net's activations at test time drift from those its moving averages were taken from. The figure names the
batch kind; the CSV does not, so keep the two apart when merging with `--from_csv`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments.run_names import parse_run_name
from resnet_jax.core import cli
from resnet_jax.core.errors import UserError
from resnet_jax.core.files import write_atomically
from resnet_jax.data.pipeline import eval_iterator
from resnet_jax.data.prepared import PreparedDataset
from resnet_jax.models.batch_norm import GroupedBatchNorm
from resnet_jax.run.load import load_run
from resnet_jax.run.state import member

FLAGS = flags.FLAGS
STATISTICS = ("moving", "batch")  # what the BNs normalise with while their responses are measured


def _define_flags() -> None:  # at run time, not at import: scripts import each other's functions
    flags.DEFINE_list("workdirs", None, "Workdirs of trained CIFAR runs.")
    flags.DEFINE_list(
        "from_csv",
        None,
        "Instead of --workdirs: CSVs this script wrote earlier, merged into one figure "
        "(for runs whose checkpoints are elsewhere or gone).",
    )
    flags.DEFINE_string("output", "figure7", "Output path without extension (.csv and .png are written).")
    flags.DEFINE_string("split", "test", "Split whose images give the responses.")
    flags.DEFINE_enum("statistics", "moving", STATISTICS, "What the BNs normalise with: their moving averages "
                      "(the net as tested) or each group's own statistics (as in training).")  # fmt: skip


def _is_3x3_response(path: tuple[str, ...]) -> bool:
    # Every conv of the CIFAR nets but the projection shortcuts is 3x3; each is followed by the BN named after it.
    return path[-1].startswith("bn") and "downsample" not in path


def layer_response_stds(workdir: str, split: str = "test", statistics: str = "moving") -> list[tuple[str, float]]:
    """[(layer, mean over channels of the per-channel std)] in network order, on every example of `split` (with
    `statistics='batch'`, on as many whole groups of `model.bn_group_size` of them as there are: training's group
    size, or its whole batch where that is None)."""
    if statistics not in STATISTICS:
        raise UserError(f"statistics={statistics!r}: choose one of {', '.join(STATISTICS)}.")
    config, model, state = load_run(workdir)
    variables = member(state.variables(), 0)
    train = statistics == "batch"

    @jax.jit
    def moments(images, mask):
        _, captured = model.apply(
            variables,
            images[:, 0],
            train=train,
            capture_intermediates=lambda m, _: isinstance(m, GroupedBatchNorm),
            mutable=["intermediates", "batch_stats"] if train else ["intermediates"],
        )
        flat = jax.tree_util.tree_flatten_with_path(captured["intermediates"])[0]
        out = {}
        for path, y in flat:
            names = tuple(getattr(k, "key", None) for k in path if hasattr(k, "key"))[:-1]
            if _is_3x3_response(names):
                w = mask[:, None, None, None].astype(jnp.float32)
                y = y.astype(jnp.float32)
                out["/".join(names)] = (
                    jnp.sum(w * y, (0, 1, 2)),
                    jnp.sum(w * y * y, (0, 1, 2)),
                    jnp.sum(w) * y.shape[1] * y.shape[2],
                )
        return out

    totals = None
    group = config.model.bn_group_size or config.batch_size
    batch_size = group * max(1, 512 // group) if train else 500  # batch mode: whole groups only
    batches = eval_iterator(
        PreparedDataset.open(config.data), config.data, split=split, protocol="single", global_batch_size=batch_size
    )
    try:
        for batch in batches:
            images, mask = batch["image"], batch["mask"]
            if train:  # whole groups of real examples: padding would join a group's statistics
                keep = np.flatnonzero(np.asarray(mask))
                keep = keep[: len(keep) // group * group]
                if not len(keep):
                    continue
                images, mask = np.asarray(images)[keep], np.asarray(mask)[keep]
            m = moments(jnp.asarray(images), jnp.asarray(mask))
            totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
    finally:
        batches.close()
    if totals is None:
        raise UserError(f"--split={split} of {workdir} has fewer than one BN group ({group}) of examples to measure.")
    stds = []
    for name, (s, ss, n) in totals.items():
        mean = s / n
        stds.append((name, float(jnp.mean(jnp.sqrt(jnp.maximum(ss / n - mean**2, 0))))))
    return sorted(stds, key=lambda item: _layer_order(item[0]))


def _layer_order(name: str) -> tuple:
    parts = name.split("/")
    if len(parts) == 1:  # the stem's bn1
        return (0, 0, 0, 0)
    stage, block = parts[0].removeprefix("layer").split("_")
    return (1, int(stage), int(block), int(parts[1].removeprefix("bn")))


def std_axis_top(responses: dict[str, list[float]]) -> float | None:
    """Where Figure 7's std axis is cut, or None for the whole range: a few layers far above the rest (plain-56's
    first layers at a short schedule reach 10 where the others lie near 0.7) would flatten every other line, so the
    axis is cut at twice the 95th percentile (to 0.5 above) when the largest std is above that and more than 3 times
    the median."""
    stds = np.concatenate([np.asarray(v, dtype=float) for v in responses.values()] + [np.zeros(0)])
    stds = stds[np.isfinite(stds)]
    if stds.size == 0:
        return None
    cut = float(np.ceil(4 * np.percentile(stds, 95)) / 2)
    return cut if stds.max() > 3 * np.median(stds) and stds.max() > cut else None


def plot_figure7(responses: dict[str, list[float]], path: str, label: str = "") -> None:
    """Figure 7: each net's layer responses (std) in layer order and sorted; `label` (say, '1/8 schedule') heads it."""
    from matplotlib.figure import Figure

    from resnet_jax.run.plots import save_figure

    fig = Figure(figsize=(7, 6.5))
    top, bottom = fig.subplots(2, 1)
    for net, stds in responses.items():
        style = "--" if net.startswith("plain") else "-"
        top.plot(range(1, len(stds) + 1), stds, style, label=net)
        bottom.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), style, label=net)
    if label:
        fig.suptitle(f"layer responses ({label})", fontsize=10)
    top.set(xlabel="layer index (original)", ylabel="std")
    bottom.set(xlabel="layer index (sorted by magnitude)", ylabel="std")
    cut = std_axis_top(responses)
    if cut is not None:  # said on the figure, so that no reader takes the cut lines for the data's end
        above = {net: [s for s in v if s > cut] for net, v in responses.items()}  # a NaN is never above
        listed = ", ".join(f"{net} {len(a)} (up to {max(a):.1f})" for net, a in above.items() if a)
        top.set_title(f"std axis cut at {cut:g}; layers above it: {listed}", fontsize=9)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if cut is not None:
            ax.set_ylim(0, cut)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _check_unique(nets: list[str]) -> None:
    repeated = sorted({net for net in nets if nets.count(net) > 1})
    if repeated:
        raise UserError(
            f"Nets {repeated} appear more than once (workdirs with the same name, or a net in two CSVs); "
            "each net is one line of the figure, so rename one."
        )


def read_responses(paths: list[str]) -> dict[str, list[tuple[str, float]]]:
    """(layer, std) per net, in file order and layer order, from CSVs written by this script."""
    by_net: dict[str, list[dict]] = {}
    nets = []
    for path in paths:
        with open(path, newline="") as f:
            in_file: dict[str, list[dict]] = {}
            for row in csv.DictReader(f):
                in_file.setdefault(row["net"], []).append(row)
        nets += in_file
        by_net.update(in_file)
    _check_unique(nets)
    return {
        net: [(r["layer"], float(r["std"])) for r in sorted(rows, key=lambda r: int(r["layer_index"]))]
        for net, rows in by_net.items()
    }


def write_run_responses(workdir: Path, net: str) -> Path:
    """Measures a trained run's responses (its first seed) into `<workdir>/figure7.csv`; returns the file."""
    path = Path(workdir) / "figure7.csv"
    write_responses(path, {net: layer_response_stds(str(workdir))})
    return path


def write_responses(path: str | Path, responses: dict[str, list[tuple[str, float]]]) -> None:
    """Writes {net: [(layer, std), ...]} whole as Figure 7's CSV: net, layer index (from 1), layer, std."""
    lines = ["net,layer_index,layer,std"] + [
        f"{net},{i + 1},{layer},{std:.6f}" for net, rows in responses.items() for i, (layer, std) in enumerate(rows)
    ]
    write_atomically(path, "\n".join(lines) + "\n")


def study_figure7(study_dir: Path, label: str = "") -> None:
    """Figure 7 of a study folder (one folder per run, named as `run_names` says) from the responses
    measured on its runs (their figure7.csv): one line per net, its lowest seed's; writes figure7.csv and .png."""
    lowest: dict[str, tuple[int, Path]] = {}
    for path in sorted(study_dir.glob("*/figure7.csv")):
        parsed = parse_run_name(path.parent.name)
        if parsed and (parsed[0] not in lowest or parsed[1][0] < lowest[parsed[0]][0]):
            lowest[parsed[0]] = (parsed[1][0], path)
    by_net = {net: path for net, (_, path) in lowest.items()}
    if not by_net:
        return
    responses = read_responses([str(p) for p in by_net.values()])
    write_responses(study_dir / "figure7.csv", responses)
    plot_figure7({net: [s for _, s in rows] for net, rows in responses.items()}, str(study_dir / "figure7.png"), label)


def main(argv: list[str]) -> None:
    del argv
    if bool(FLAGS.workdirs) == bool(FLAGS.from_csv):
        raise app.UsageError("Give exactly one of --workdirs (trained runs) and --from_csv (earlier CSVs).")
    if FLAGS.from_csv:  # read in full first: --output may name one of the inputs
        nets = list(read_responses(FLAGS.from_csv).items())
    else:
        _check_unique([Path(workdir).name for workdir in FLAGS.workdirs])
        nets = (
            (Path(workdir).name, layer_response_stds(workdir, FLAGS.split, FLAGS.statistics))
            for workdir in FLAGS.workdirs
        )
    measured, plotted = {}, {}
    for net, stds in nets:  # for workdirs, each net is measured, written and reported in turn
        measured[net] = stds
        write_responses(f"{FLAGS.output}.csv", measured)  # once a net is measured: no empty file
        plotted[net] = [s for _, s in stds]
        logging.info("%s: %d layers, mean std %.4f", net, len(stds), np.mean(plotted[net]))
    label = "BN batch statistics, as in training" if FLAGS.statistics == "batch" else ""
    plot_figure7(plotted, f"{FLAGS.output}.png", label)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
