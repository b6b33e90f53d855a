"""What a GPU lease brought back, merged here (no GPU needed): `python -m experiments.lease --unpack=DIR`.

Finished runs go into results/cifar10_depth_study/, the lease record, fill choice and command outputs into
results/leases/<kind>/ (where the next lease's plan reads them); runs cut short and the compilation cache go into
`CACHE`, never into the repository (experiments/lease_kit.py carries them to the next lease). Table 6 and Figures 6
and 7 are regenerated, and the lease's phases and programs are added to benchmarks/RESULTS.md, newest first.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from absl import logging

from experiments import lease_files
from experiments import lease_plan as plan
from resnet_jax.core.files import write_atomically

CACHE = Path.home() / ".cache" / "resnet_jax" / "leases"  # what the next lease carries (lease_kit.py)


def unpack(source: Path, results: Path, results_md: Path | None = None) -> dict:
    """Merges what a lease brought back into `results`, regenerates the study's tables and figures, and adds the
    lease's phases and fill table to `results_md` (default: benchmarks/RESULTS.md for the repository's results,
    else <results>/RESULTS.md)."""
    from experiments import cifar_depth_study as study

    folder = source if source.is_dir() else source.parent
    record = lease_files.read_json(folder / "lease.json") or {}
    kind = record.get("device_kind", "unknown")
    merged: dict[str, list[str]] = {"runs": [], "leases": [], "carried": []}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for name, target in (("runs.tar.gz", scratch / "runs"), ("carry.tar.gz", scratch / "carry")):
            data = lease_files.joined(folder, name)
            if data is not None:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                    archive.extractall(target, filter="data")
        for run in sorted((scratch / "runs" / plan.STUDY).glob("*")):
            destination = results / plan.STUDY / run.name
            if destination.exists():
                logging.warning("%s is in %s already: kept as it is.", run.name, destination.parent)
                continue
            shutil.copytree(run, destination)
            merged["runs"].append(run.name)
        for item in sorted((scratch / "runs" / plan.LEASES).glob("*")):
            shutil.copytree(item, results / plan.LEASES / kind / item.name, dirs_exist_ok=True)
            merged["leases"].append(item.name)
        for kind_folder, cache in ((plan.STUDY, CACHE), (plan.LEASES, CACHE / plan.LEASES)):
            for run in sorted((scratch / "carry" / kind_folder).glob("*")):
                shutil.rmtree(cache / run.name, ignore_errors=True)
                shutil.copytree(run, cache / run.name)
                merged["carried"].append(run.name)
        cache = lease_files.joined(folder, "jax_cache.tar.gz")
        if cache is not None:  # the compiled programs, for the next lease of this kind (lease_kit carries them)
            with tarfile.open(fileobj=io.BytesIO(cache), mode="r:gz") as archive:
                archive.extractall(CACHE, filter="data")
        logs = lease_files.joined(folder, "logs.tar.gz")
        if logs is not None:
            with tarfile.open(fileobj=io.BytesIO(logs), mode="r:gz") as archive:
                archive.extractall(scratch / "logs", filter="data")
            for log in sorted((scratch / "logs" / "logs").glob("*.log")):
                target = results / plan.LEASES / kind / "logs" / record.get("started", "lease").replace(":", "")
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(log, target / log.name)
    for name in merged["runs"]:  # what finished is no longer carried
        shutil.rmtree(CACHE / name, ignore_errors=True)
    for name in merged["leases"]:
        shutil.rmtree(CACHE / plan.LEASES / name, ignore_errors=True)
    leases = results / plan.LEASES / kind
    leases.mkdir(parents=True, exist_ok=True)
    write_atomically(leases / f"{record.get('started', 'lease').replace(':', '')}.json", json.dumps(record, indent=2))
    study_dir = results / plan.STUDY
    if study_dir.is_dir():
        study.collect(study_dir, list(study.DEFAULT_NETS) + ["resnet1202"])  # Table 6, Figures 6 and 7
        _runs_md(study_dir, merged["runs"], record)
    if results_md is None and results.resolve() == (lease_files.REPO / "results").resolve():
        results_md = lease_files.REPO / "benchmarks" / "RESULTS.md"
    fill = lease_files.read_json(leases / "fill" / "fill.json")
    _results_md(results_md or results / "RESULTS.md", record, fill, merged)
    return merged


def _results_md(path: Path, record: dict, fill: dict | None, merged: dict) -> None:
    """Appends a lease's section: its phases, what it finished and carried, and (if it measured it) the fill table."""
    from benchmarks.fill import table

    phases = record.get("phases", {})
    lines = [
        "",
        f"## {record.get('started', '?')[:10]}, a GPU lease on {record.get('device_kind', '?')} "
        "(`python -m experiments.lease`; record: results/leases/)",
        "",
        "| phase | seconds |",
        "|---|---:|",
        *(f"| {name.removesuffix('_s').replace('_', ' ')} | {value:.0f} |" for name, value in phases.items() if value),
        "",
        f"Finished: {', '.join(record.get('finished', [])) or 'nothing'}; carried to the next lease: "
        f"{', '.join(record.get('carried', [])) or 'nothing'}; "
        f"left on the agenda: {', '.join(record.get('left', [])) or 'nothing'}.",
    ]
    programs = [i for i in record.get("items", []) if i.get("program") and "exit" in i]  # the ones that ran
    if programs:
        lines += [
            "",
            "| program | finished | steps | set-up s | first dispatch s | loop s | ms per step |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {i['program']} | {i.get('finished')} | {i.get('step', '')} | {i.get('setup_s') or 0:.0f} | "
            f"{i.get('first_dispatch_s') or 0:.0f} | {i.get('loop_s') or 0:.0f} | "
            f"{(i.get('seconds_per_step') or 0) * 1e3:.2f} |"
            for i in programs
        ]
    if fill and "fill" in merged["leases"]:
        lines += ["", "Filling the device (`python -m benchmarks.fill`, in the lease):", "", table(fill)]
    _insert_newest_first(path, "\n".join(lines).lstrip("\n") + "\n")


def _insert_newest_first(path: Path, section: str) -> None:
    """Puts `section` (a "## " heading and its text) above the file's first "## " section: RESULTS.md is newest first.

    The file's title and preamble stay on top; a file without sections gets it at the end. Written whole
    (`write_atomically`), so a crash leaves the old file as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    if text.startswith("## ") or "\n## " in text:
        at = 0 if text.startswith("## ") else text.index("\n## ") + 1
        text = f"{text[:at]}{section}\n{text[at:]}"
    else:
        text = f"{text.rstrip()}\n\n{section}" if text.strip() else section
    write_atomically(path, text)


def _runs_md(study_dir: Path, runs: list[str], record: dict) -> None:
    """Adds the runs a lease brought to RUNS.md, with the device and the lease's date."""
    if not runs:
        return
    path = study_dir / "RUNS.md"
    text = path.read_text() if path.exists() else "| run | device | date | how |\n|---|---|---|---|\n"
    device, date = record.get("device_kind", "?"), record.get("started", "?")[:10]
    for run in runs:
        text += f"| {run} | {device} | {date} | `python -m experiments.lease` |\n"
    write_atomically(path, text)
