"""Collects ImageNet runs into the paper's Tables 2, 3 and 4, beside the paper's numbers.

    python experiments/imagenet_tables.py --workdirs=gs://BUCKET/table2_resnet34,gs://BUCKET/table3_resnet50,...

Each workdir is a run of resnet_jax.main (its config.json says which net and shortcut option it is). A row's result
is the run's final evaluation with the table's protocol: result.json when the run ended with it, else the newest
eval_<protocol>_validation_<step>.json written by `python -m resnet_jax.evaluate`. Missing rows are shown as such.
Prints Markdown; --output also writes it to a file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags
from etils import epath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `configs`

from configs import imagenet_table2, imagenet_table3, imagenet_table4  # noqa: E402

TABLES = [("Table 2", imagenet_table2.ROWS, "10crop"), ("Table 3", imagenet_table3.ROWS, "10crop"),
          ("Table 4", imagenet_table4.ROWS, "multiscale")]

flags.DEFINE_list("workdirs", [], "Run workdirs (local or gs://).")
flags.DEFINE_string("output", None, "Also write the Markdown tables here.")
FLAGS = flags.FLAGS


def run_results(workdir: str) -> tuple[tuple[str, str], dict[str, dict]]:
    """((model, shortcut), {protocol: result}) of one run, from its config and evaluation files."""
    path = epath.Path(workdir)
    config = json.loads((path / "config.json").read_text())
    results: dict[str, dict] = {}
    for file in sorted(path.glob("eval_*_validation_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1])):
        record = json.loads(file.read_text())
        results[record["protocol"]] = record
    if (path / "result.json").exists():
        record = json.loads((path / "result.json").read_text())
        results.setdefault(record["protocol"], record)
    return (config["model"]["name"], config["model"]["shortcut"]), results


def _paper(expected) -> str:
    return f"{expected[0]:.2f} / {expected[1]:.2f}" if isinstance(expected, tuple) else f"{expected:.2f}"


def tables_markdown(workdirs: list[str]) -> str:
    runs: dict[tuple[str, str], dict[str, dict]] = {}
    for workdir in workdirs:
        key, results = run_results(workdir)
        runs.setdefault(key, {}).update(results)
    out = []
    for title, rows, protocol in TABLES:
        out += [f"### {title} ({protocol}, ImageNet validation, error %)", "",
                "| net | shortcut | top-1 / top-5 (ours) | top-1 / top-5 (paper) |", "|---|---|---:|---:|"]
        for model, shortcut, expected in rows.values():
            result = runs.get((model, shortcut), {}).get(protocol)
            ours = (f"{100 * result['top1_error']:.2f} / {100 * result['top5_error']:.2f}" if result
                    else "not run")
            out.append(f"| {model} | {shortcut} | {ours} | {_paper(expected)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    del argv
    markdown = tables_markdown(FLAGS.workdirs)
    print(markdown)
    if FLAGS.output:
        epath.Path(FLAGS.output).write_text(markdown)


if __name__ == "__main__":
    app.run(main)
