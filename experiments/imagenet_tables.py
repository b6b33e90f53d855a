"""Collects ImageNet runs into the paper's Tables 2, 3 and 4, beside the paper's numbers (docs/paper.md).

    python -m experiments.imagenet_tables --workdirs=gs://BUCKET/table2_resnet34,gs://BUCKET/table3_resnet50,...

Each workdir is a run of resnet_jax.main (its config says which net and shortcut option it is). A row's result is
the run's final evaluation with the table's protocol: result.json when the run ended with it, else the newest later
evaluation with that protocol on the validation split (`python -m resnet_jax.evaluate`). Missing rows are shown as
such. Prints Markdown; --output also writes it to a file.
"""

from __future__ import annotations

from typing import Any

from absl import flags
from etils import epath

from configs import imagenet_table2, imagenet_table3, imagenet_table4
from configs.imagenet_recipe import Row
from experiments import paper
from resnet_jax.core import cli
from resnet_jax.run.rundir import RunDir

TABLES = [
    ("Table 2", imagenet_table2.ROWS, "10crop"),
    ("Table 3", imagenet_table3.ROWS, "10crop"),
    ("Table 4", imagenet_table4.ROWS, "multiscale"),
]

FLAGS = flags.FLAGS


def _define_flags() -> None:  # at run time, not at import: scripts import each other's functions
    flags.DEFINE_list("workdirs", [], "Run workdirs (local or gs://).")
    flags.DEFINE_string("output", None, "Also write the Markdown tables here.")


def run_results(workdir: str) -> tuple[Row, dict[str, dict[str, Any]]]:
    """(its table row, {protocol: result}) of one run, from its config, result and later evaluations."""
    run_dir = RunDir(workdir)
    config = run_dir.read_config()
    results: dict[str, dict[str, Any]] = {}
    for record in run_dir.evaluations():  # oldest checkpoint first: the newest wins
        if record["split"] == "validation":
            results[record["protocol"]] = record
    final = run_dir.read_result()
    if final is not None:
        results.setdefault(final["protocol"], final)
    return Row(config.model.name, config.model.shortcut), results


def _paper(table: str, arg: str) -> str:
    row = paper.table(table)[arg]
    return f"{row['top-1']:.2f}" if row.get("top-5") is None else f"{row['top-1']:.2f} / {row['top-5']:.2f}"


def tables_markdown(workdirs: list[str]) -> str:
    runs: dict[Row, dict[str, dict[str, Any]]] = {}
    for workdir in workdirs:
        row, results = run_results(workdir)
        runs.setdefault(row, {}).update(results)
    out = []
    for title, rows, protocol in TABLES:
        out += [
            f"### {title} ({protocol}, ImageNet validation, error %)",
            "",
            "| net | shortcut | top-1 / top-5 (ours) | paper |",
            "|---|---|---:|---:|",
        ]
        for arg, row in rows.items():
            result = runs.get(row, {}).get(protocol)
            ours = f"{100 * result['top1_error']:.2f} / {100 * result['top5_error']:.2f}" if result else "not run"
            out.append(f"| {row.model} | {row.shortcut} | {ours} | {_paper(title, arg)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    del argv
    markdown = tables_markdown(FLAGS.workdirs)
    print(markdown)
    if FLAGS.output:
        epath.Path(FLAGS.output).write_text(markdown)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
