"""Mutation testing of the modules where a silent mistake changes a result: does some test fail when the code breaks?

    pip install -e ".[mutation]" -c constraints.txt
    python -m benchmarks.mutation [--modules=schedules,scores] [--workers=2] [--out=results/mutation]
    python -m benchmarks.mutation --report_only    # after editing benchmarks/mutation_equivalents.toml

Each module's mutants (pytest-gremlins: comparison, boundary, arithmetic, boolean and return-value mutations) run
against the module's own tests only (`MODULES`), and within them only the tests whose coverage reaches the mutated
line. A mutant is *killed* when a test fails or it times out, *survives* when every test passes. A survivor is
*explained* by an entry of `benchmarks/mutation_equivalents.toml` (the module, the line's text, the mutation, and why
it cannot change a result); any other survivor is a missing test. The run copies the working tree (tracked files and
untracked ones git does not ignore) to a scratch folder beside a link to `../shared`, so the repository is never
touched and uncommitted tests count. Writes `<out>/report.md` (per module: made, killed, survived, explained; each
survivor on one line), `<out>/mutants.json` and pytest's output per module in `<out>/logs/`; prints one JSON line per
module and a last line with the totals and the machine. Exit status 1 while an unexplained survivor is left.

Not part of CI (about an hour on the project's 2-core CPU). Why pytest-gremlins: it runs every mutant in a fresh
pytest process. mutmut 3 forks each mutant from a process that has already run JAX, which JAX warns deadlocks (on
eval/scores.py the first covered mutant timed out); cosmic-ray rewrites the files on disk and has no per-line test
selection.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from absl import app, flags

from resnet_jax.core.machine import describe

REPO = Path(__file__).resolve().parents[1]
EQUIVALENTS = REPO / "benchmarks" / "mutation_equivalents.toml"


@dataclasses.dataclass(frozen=True)
class Module:
    """A module whose mistakes change a result, and the tests that are its own."""

    path: str
    tests: tuple[str, ...]
    select: str = ""  # a pytest -k expression, where the files' other tests are slow and add nothing here
    timeout_s: int = 300  # one mutant's test run; a mutant that hangs counts as killed

    @property
    def name(self) -> str:
        """The file's stem, with its folder where two modules share a stem (`kernels_batch_norm`)."""
        path = Path(self.path)
        shared = sum(Path(m.path).stem == path.stem for m in MODULES) > 1
        return f"{path.parent.name}_{path.stem}" if shared else path.stem


# The cheap first: the nets' tests compile every architecture, so their modules come last.
_NETS = "counts or multiply_adds or stage_sizes or shortcut or plain or zero_init or he_init or bn_groups or backbone"
MODULES = (
    Module("resnet_jax/recipe/schedules.py", ("tests/test_optim_schedules.py",)),
    Module("resnet_jax/recipe/changes.py", ("tests/test_resume.py",)),
    Module("resnet_jax/run/checkpoints.py", ("tests/test_run.py",)),
    Module("resnet_jax/eval/scores.py", ("tests/test_evaluation.py",)),
    Module("resnet_jax/eval/results.py", ("tests/test_evaluation.py",)),
    Module("resnet_jax/data/transforms.py", ("tests/test_data_transforms.py",)),
    Module("resnet_jax/data/protocols.py", ("tests/test_data_protocols.py",)),
    Module("resnet_jax/data/on_device.py", ("tests/test_data_on_device.py",)),
    Module("resnet_jax/interop/convert.py", ("tests/test_convert.py", "tests/test_torch_files.py")),
    Module("resnet_jax/train/step.py", ("tests/test_train_step.py", "tests/test_train_step_vs_torch.py"),
           select="not resnet50"),
    Module("resnet_jax/kernels/conv.py", ("tests/test_conv.py",)),
    Module("resnet_jax/kernels/batch_norm.py", ("tests/test_kernels_batch_norm.py",)),
    Module("resnet_jax/models/specs.py", ("tests/test_models.py",), select=_NETS + " or bad_names or spec_entries"),
    Module("resnet_jax/models/batch_norm.py", ("tests/test_models.py", "tests/test_train_step_vs_torch.py"),
           select=f"{_NETS} or pytorch"),
    Module("resnet_jax/models/resnet.py", ("tests/test_models.py", "tests/test_convert.py"),
           select=f"{_NETS} or score_map or layout_matches or reference or spec_entries"),
)  # fmt: skip

flags.DEFINE_list(
    "modules",
    [],
    "Module names to run (file stems, with the folder where two share one: models_batch_norm); all when empty.",
)
flags.DEFINE_integer("workers", 2, "Mutants run side by side.")
flags.DEFINE_string("out", str(REPO / "results" / "mutation"), "Folder for report.md and mutants.json.")
flags.DEFINE_bool("report_only", False, "Rewrite report.md from mutants.json with the equivalents as they are now.")
FLAGS = flags.FLAGS


def working_tree_copy(scratch: Path) -> Path:
    """The repository's tracked files and the untracked ones git does not ignore, copied into `scratch`/repo, with
    `scratch`/shared the real `../shared` (the tests read their data from beside the repository)."""
    into = scratch / "repo"
    if (REPO.parent / "shared").exists():
        (scratch / "shared").symlink_to(REPO.parent / "shared")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def run_module(module: Module, tree: Path, log: Path) -> list[dict]:
    """Runs `module`'s mutants against its tests in `tree`, pytest's output in `log`; returns pytest-gremlins' result
    per mutant."""
    report = tree / "coverage" / "gremlins" / "gremlins.json"
    report.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *module.tests,
        *(["-k", module.select] if module.select else []),
        "--gremlins", f"--gremlin-targets={module.path}", "--gremlin-report=json",
        f"--gremlin-workers={FLAGS.workers}", f"--gremlin-mutant-timeout={module.timeout_s}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as output:
        finished = subprocess.run(command, cwd=tree, env=env, stdout=output, stderr=subprocess.STDOUT)
    if not report.exists():
        raise RuntimeError(f"{module.path}: pytest-gremlins wrote no report (exit {finished.returncode}): see {log}")
    results = json.loads(report.read_text())["results"]
    lines = (tree / module.path).read_text().splitlines()
    return [
        {
            "module": module.path,
            "line_number": r["line_number"],
            "line": lines[r["line_number"] - 1].strip(),
            "mutation": r["description"],
            "operator": r["operator"],
            "status": r["status"],
            "tests": len(r.get("selected_tests") or []),
        }
        for r in results
    ]


def equivalents() -> list[dict]:
    """The survivors known not to change a result: module, line (its text, stripped), mutation, why."""
    entries = tomllib.loads(EQUIVALENTS.read_text()).get("equivalent", []) if EQUIVALENTS.exists() else []
    for entry in entries:
        missing = {"module", "line", "mutation", "why"} - entry.keys()
        if missing:
            raise ValueError(f"{EQUIVALENTS.name}: an entry lacks {sorted(missing)}: {entry}")
    return entries


def explain(mutants: list[dict], known: list[dict]) -> None:
    """Sets each survivor's `why` from the entry that names its module, line text and mutation."""
    for mutant in mutants:
        mutant.pop("why", None)
        if mutant["status"] != "survived":
            continue
        for entry in known:
            if (entry["module"], entry["line"], entry["mutation"]) == (
                mutant["module"], mutant["line"], mutant["mutation"]
            ):  # fmt: skip
                mutant["why"] = entry["why"]


def summary(path: str, mutants: list[dict]) -> dict:
    survived = [m for m in mutants if m["status"] == "survived"]
    return {
        "module": path,
        "made": len(mutants),
        "killed": sum(m["status"] in ("zapped", "timeout") for m in mutants),
        "errors": sum(m["status"] == "error" for m in mutants),
        "survived": len(survived),
        "explained": sum("why" in m for m in survived),
    }


def code_version() -> str:
    """The commit the working tree is at, '+ changes' when it differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True)
    return head.stdout.strip() + (" + changes" if dirty.stdout.strip() else "")


def write_report(out: Path, runs: dict[str, dict], known: list[dict]) -> dict:
    """report.md and mutants.json in `out` for every module measured there (`runs`: module path -> its run), with
    the entries of `known` that explain no survivor of a measured module (stale: the code or tests changed); returns
    the totals."""
    for run in runs.values():  # the explanations as the equivalents file gives them now
        explain(run["mutants"], known)
    order = [m.path for m in MODULES if m.path in runs]
    rows = [summary(path, runs[path]["mutants"]) for path in order]
    totals = {key: sum(r[key] for r in rows) for key in ("made", "killed", "errors", "survived", "explained")}
    totals["unexplained"] = totals["survived"] - totals["explained"]
    text = [
        "# Mutation testing (`python -m benchmarks.mutation`)",
        "",
        f"Score: {totals['killed']} of the {totals['made'] - totals['explained']} mutants that can change a result "
        f"killed; {totals['unexplained']} unexplained survivors; {totals['errors']} errors.",
        "",
        "| module | made | killed | survived | explained | unexplained | minutes | code | machine |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
        *(
            f"| {r['module']} | {r['made']} | {r['killed']} | {r['survived']} | {r['explained']} | "
            f"{r['survived'] - r['explained']} | {runs[r['module']]['minutes']} | {runs[r['module']]['code']} | "
            f"{runs[r['module']]['machine']} |"
            for r in rows
        ),  # fmt: skip
        "",
    ]
    for path in order:
        survived = [m for m in runs[path]["mutants"] if m["status"] == "survived"]
        if survived:
            text += [f"## {path}", ""]
            text += [
                f"- line {m['line_number']} `{m['line']}`: {m['mutation']} ({m['tests']} tests ran): "
                + (f"equivalent: {m['why']}" if "why" in m else "**unexplained**")
                for m in survived
            ]
            text.append("")
    survivors = {(m["module"], m["line"], m["mutation"]) for r in runs.values() for m in r["mutants"] if "why" in m}
    stale = [e for e in known if e["module"] in runs and (e["module"], e["line"], e["mutation"]) not in survivors]
    if stale:
        text += ["## Equivalents that explain no survivor now", ""]
        text += [f"- {e['module']}: `{e['line']}`: {e['mutation']}" for e in stale]
        text.append("")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(text))
    (out / "mutants.json").write_text(json.dumps(runs, indent=1) + "\n")
    return totals


def main(argv: list[str]) -> None:
    del argv
    unknown = set(FLAGS.modules) - {m.name for m in MODULES}
    if unknown:
        raise app.UsageError(f"--modules names {sorted(unknown)}; known: {', '.join(m.name for m in MODULES)}")
    modules = [m for m in MODULES if not FLAGS.modules or m.name in FLAGS.modules]
    out, known = Path(FLAGS.out), equivalents()
    # A run of some modules replaces theirs and keeps the others' earlier results (each labelled with its code).
    runs = json.loads((out / "mutants.json").read_text()) if (out / "mutants.json").exists() else {}
    if FLAGS.report_only:
        totals = write_report(out, runs, known)
        print(json.dumps(totals))
        sys.exit(1 if totals["unexplained"] else 0)
    machine, code = describe(), code_version()
    with tempfile.TemporaryDirectory(prefix="mutation_") as scratch:
        tree = working_tree_copy(Path(scratch))
        for module in modules:
            started = time.perf_counter()
            mutants = run_module(module, tree, out / "logs" / f"{module.name}.log")
            runs[module.path] = {
                "minutes": round((time.perf_counter() - started) / 60, 1),
                "code": code,
                "machine": f"{machine['cpu']}, {machine['cpu_cores']} cores, {machine['date']}",
                "mutants": mutants,
            }
            totals = write_report(out, runs, known)
            print(json.dumps(summary(module.path, mutants)), flush=True)
    print(json.dumps({**totals, **machine}), flush=True)
    sys.exit(1 if totals["unexplained"] else 0)


if __name__ == "__main__":
    app.run(main)
