"""One command turns a GPU lease into finished runs; one more brings them home.

On the lease machine (its command line is in the README, "GPU leases"; the kit comes from experiments/lease_kit.py):

    python -m experiments.lease --budget_s=540 --out=$OUT

takes the committed agenda's next items (experiments/lease_plan.py: the fill measurement once per device kind, then
the depth study's missing seeds, the benchmarks and controls), runs what fits into `--budget_s` from the step times
measured on this device kind (results/leases/<kind>/fill.json) or in this lease, and stops cleanly before the budget
ends: runs still going are saved at a dispatch boundary. Everything comes back in `--out` as at most 8 files of at
most 16 MB: `lease.json` (what ran, how long each phase took: start-up, install, data, compilation, training; what is
left), `runs.tar.gz` (the finished runs' logs, with Figure 7's per-layer statistics measured right after each net
finished; the fill figures; the commands' outputs) and `carry.tar.gz.<k>` (the runs not finished, with their
checkpoints, for the next lease).

Back here, with no GPU:

    python -m experiments.lease --unpack=DIR [--results=results]

merges what came back into `--results` (finished runs into results/cifar10_depth_study/, the fill choice and
command outputs into results/leases/<kind>/, the runs not finished into ~/.cache/resnet_jax/leases/, never into the
repository), regenerates Table 6, Figure 6 and Figure 7 there, and appends the lease's phases and fill table to
benchmarks/RESULTS.md. `--dry_run` runs all of it on the CPU with the quick schedule and a tiny agenda.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from absl import app, flags, logging

from experiments import lease_plan as plan

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.path.expanduser("~/.cache/resnet_jax/leases"))
MAX_FILE = 16 * 2**20
MAX_FILES = 8
CARRY_MB = 20.0  # checkpoints carried to the next lease: what the 60 MiB that travels leaves beside the kit
RESERVE_S = 45.0  # the end of a lease: the last saves, Figure 7, the archive
DRY_STEPS = 20  # a dry run's schedule

FLAGS = flags.FLAGS


def _define_flags() -> None:  # at run time, not at import: scripts import each other's functions
    flags.DEFINE_float(
        "budget_s", 540, "Seconds this command may take in all (the device call's limit, less a margin)."
    )
    flags.DEFINE_string("out", None, "Folder for what comes back (the device's $OUT).")
    flags.DEFINE_string(
        "kit", ".lease_kit", "The kit: wheels (installed before this runs) and data/ (../shared/data's)."
    )
    flags.DEFINE_string("carry", ".lease_carry", "Runs not finished by earlier leases, with their checkpoints.")
    flags.DEFINE_string("work", os.path.join(tempfile.gettempdir(), "lease"), "Scratch folder for data and runs.")
    flags.DEFINE_string(
        "results", str(REPO / "results"), "The committed results (what is finished; --unpack's target)."
    )
    flags.DEFINE_bool("dry_run", False, "The whole machinery on the CPU: quick schedule, a tiny agenda, tiny fill.")
    flags.DEFINE_string(
        "unpack", None, "Merge what a lease brought back (its folder, or its runs.tar.gz) into --results."
    )
    flags.DEFINE_string("program", None, "Internal: train one program (JSON) until --deadline, in this process.")
    flags.DEFINE_float("deadline", 0.0, "Internal: the program's deadline (time.time()).")


def device_kind() -> str:
    """This machine's accelerator as a folder name: 'nvidia_h200', 'cpu', ..."""
    import jax

    device = jax.devices()[0]
    name = device.platform if device.platform == "cpu" else getattr(device, "device_kind", device.platform)
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def dry_agenda() -> tuple[plan.Item, ...]:
    """The CPU rehearsal's agenda: a tiny fill, then the first seed of two nets on a short schedule."""
    return (plan.Fill(budget_s=40), plan.Study("first seeds", ("plain20", "resnet20"), (0,)))


# ------------------------------------------------------------------------------------------- one program
def program_config(program: plan.Program, tfds: Path, shape: plan.Shape, dry_run: bool):
    """The depth study's config of `program` (its seeds trained together), as the lease runs it."""
    from experiments import cifar_depth_study as study

    config = study.net_config(
        program.net, quick=dry_run, data_dir=str(tfds), runs=len(program.seeds), first_seed=program.seeds[0]
    )
    config.multi_run = shape.mode
    if dry_run:  # a CPU rehearsal: a few steps of the quick schedule
        config.num_steps, config.steps_per_dispatch = DRY_STEPS, 2
        config.log_every_steps = config.eval.every_steps = config.checkpoint_every_steps = 10
        config.schedule.boundaries, config.schedule.ramp_steps = (10, 15), 5
    return config


def train_program(spec: dict) -> None:
    """Trains one program until its deadline, then (finished) measures Figure 7's responses of its first seed."""
    from resnet_jax.run.rundir import RunDir
    from resnet_jax.train.loop import Trainer

    program = plan.Program(spec["net"], tuple(spec["seeds"]))
    workdir = Path(spec["workdir"])
    config = program_config(program, Path(spec["tfds"]), plan.Shape(**spec["shape"]), spec["dry_run"])
    trainer = Trainer(config, str(workdir), deadline=spec["deadline"])
    result = trainer.run()
    record = {"program": spec, "finished": result is not None, "step": trainer.step, **trainer.timings}
    if result is not None:
        from experiments.layer_responses import layer_response_stds

        started = time.perf_counter()
        stds = layer_response_stds(str(workdir))
        lines = ["net,layer_index,layer,std"] + [f"{program.net},{i + 1},{n},{s:.6f}" for i, (n, s) in enumerate(stds)]
        (workdir / "figure7.csv").write_text("\n".join(lines) + "\n")
        record["figure7_s"] = time.perf_counter() - started
    (RunDir(workdir).path / "program.json").write_text(json.dumps(record, indent=2))


# ------------------------------------------------------------------------------------------- the lease
class Lease:
    """One lease: its clock, its record, and the items it runs in agenda order."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool, clock=time.time):
        self.clock, self.started = clock, clock()
        self.deadline = self.started + budget_s - RESERVE_S
        self.out, self.dry_run = out, dry_run
        self.work = Path(FLAGS.work)
        # A dry run's quick-schedule runs are not the study's: it starts from empty results of its own.
        self.results = self.work / "results" if dry_run else Path(FLAGS.results)
        self.kit, self.carry = Path(FLAGS.kit), Path(FLAGS.carry)
        self.runs = self.work / plan.STUDY
        self.steps = DRY_STEPS if dry_run else plan.PAPER_STEPS
        self.min_start_s = 20.0 if dry_run else plan.MIN_START_S
        self.record: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))}
        self.record["phases"] = {
            "machine_uptime_at_start_s": _uptime(),
            "install_s": _float(os.environ.get("LEASE_INSTALL_S")),
        }
        self.record["items"] = []

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def run(self) -> None:
        self.kind = device_kind()
        self.record["device_kind"] = self.kind
        kind_results = self.results / plan.LEASES / self.kind
        fill = _read_json(kind_results / "fill.json")
        started = self.clock()
        self._prepare_cifar()
        self.record["phases"]["data_s"] = self.clock() - started
        carried = self._bring_carried()
        done_items = {p.name for p in kind_results.iterdir()} if kind_results.is_dir() else set()
        done_items = {name for name in done_items if self._command_done(kind_results / name, name)} | (
            {"fill"} if fill else set()
        )
        agenda = dry_agenda() if self.dry_run else plan.AGENDA
        left = plan.next_items(agenda, done_items, plan.finished_seeds(self.results / plan.STUDY))
        for item in left:
            if self.remaining() < self.min_start_s:
                break
            if isinstance(item, plan.Fill):
                fill = self._fill(item) or fill
            elif isinstance(item, plan.Study):
                self._study(item, fill, carried)
            else:
                self._command(item)
        self.record["left"] = [
            item.name for item in plan.next_items(agenda, self._done_now(done_items), self._seeds_now())
        ]
        self._archive()

    # --- phases
    def _prepare_cifar(self) -> Path:
        from resnet_jax.data.prepare import prepare

        tfds = self.work / "tfds"
        with contextlib.redirect_stdout(io.StringIO()):
            prepare(
                "cifar10", source=str(self.kit / "data" / "cifar10" / "cifar-10-images-jpg.tar.gz"), data_dir=str(tfds)
            )
        return tfds

    def _bring_carried(self) -> set[str]:
        """Copies the runs carried from earlier leases into this lease's runs; returns their names."""
        self.runs.mkdir(parents=True, exist_ok=True)
        names = set()
        for run in sorted(self.carry.iterdir()) if self.carry.is_dir() else []:
            if run.is_dir() and run.name != plan.LEASES and not (self.runs / run.name).exists():
                shutil.copytree(run, self.runs / run.name)
                names.add(run.name)
        return names

    def _fill(self, item: plan.Fill) -> dict | None:
        out = self.out_folder("fill")
        budget = min(item.budget_s, self.remaining() - self.min_start_s)
        argv = [sys.executable, "-m", "benchmarks.fill", f"--out={out / 'fill.json'}", f"--budget_s={budget:.0f}"]
        if self.dry_run:
            argv += ["--tiny", "--members=2", "--processes=2", "--dispatches=1"]
        started = self.clock()
        code = self._call(argv, out / "stdout.txt", timeout=budget + 240)
        self.record["items"].append({"item": "fill", "exit": code, "seconds": self.clock() - started})
        return _read_json(out / "fill.json")

    def _command(self, item: plan.Command) -> None:
        missing = [need for need in item.needs if not (self.kit / "data" / need).exists()]
        if missing or item.estimate_s > self.remaining():
            why = f"the kit lacks {missing}" if missing else f"needs ~{item.estimate_s:.0f} s"
            self.record["items"].append({"item": item.name, "skipped": why})
            return
        out = self.out_folder(item.name)
        carried = self.carry / plan.LEASES / item.name
        if carried.is_dir():
            shutil.copytree(carried, out, dirs_exist_ok=True)
        argv = [a.format(out=out, data=self.kit / "data") for a in item.argv]
        argv[0] = sys.executable if argv[0] == "python" else argv[0]
        started = self.clock()
        code = self._call(argv, out / "stdout.partial", timeout=max(self.remaining(), 1))
        if code == 0:
            (out / "stdout.partial").replace(out / "stdout.txt")
        self.record["items"].append({"item": item.name, "exit": code, "seconds": self.clock() - started})

    def _study(self, item: plan.Study, fill: dict | None, carried: set[str]) -> None:
        shape = plan.Shape.from_fill(fill)
        programs = plan.pending_programs(item, plan.finished_seeds(self.results / plan.STUDY), shape, carried)
        running: list[tuple[plan.Program, subprocess.Popen, float]] = []
        carry_left = CARRY_MB - sum(_size_mb(self.runs / name) for name in carried)
        while programs or running:
            while programs and len(running) < shape.processes:
                program = programs[0]
                steps_done = _steps_done(self.runs / program.run)
                if not plan.should_start(
                    program, steps_done, self.remaining(), fill, carry_left, self.steps, self.min_start_s
                ):
                    self.record["items"].append({"item": item.name, "program": program.run, "skipped": "no time"})
                    programs.pop(0)
                    continue
                programs.pop(0)
                carry_left -= plan.checkpoint_mb(program.net, len(program.seeds))
                running.append((program, self._start_program(program, shape), self.clock()))
            time.sleep(1.0)
            for entry in [e for e in running if e[1].poll() is not None]:
                running.remove(entry)
                program, process, started = entry
                record = _read_json(self.runs / program.run / "program.json") or {}
                self.record["items"].append(
                    {
                        "item": item.name,
                        "program": program.run,
                        "exit": process.returncode,
                        "seconds": self.clock() - started,
                        **{k: v for k, v in record.items() if k != "program"},
                    }
                )

    def _start_program(self, program: plan.Program, shape: plan.Shape) -> subprocess.Popen:
        spec = {
            "net": program.net,
            "seeds": list(program.seeds),
            "workdir": str(self.runs / program.run),
            "tfds": str(self.work / "tfds"),
            "shape": vars(shape) if not isinstance(shape, dict) else shape,
            "dry_run": self.dry_run,
            "deadline": self.deadline,
        }
        env = {**os.environ, "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / shape.processes:.3f}"}
        log = open(self.runs.parent / f"{program.run}.log", "w")
        argv = [sys.executable, "-m", "experiments.lease", f"--program={json.dumps(spec)}", "--work", str(self.work)]
        argv += [f"--compilation_cache={self.work / 'jax_cache'}"]
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def _call(self, argv: list[str], log: Path, timeout: float) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            try:
                return subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                return -1

    def out_folder(self, name: str) -> Path:
        folder = self.work / plan.LEASES / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _command_done(self, folder: Path, name: str) -> bool:
        item = next((i for i in plan.AGENDA if isinstance(i, plan.Command) and i.name == name), None)
        return item is not None and (folder / item.output).exists()

    def _done_now(self, before: set[str]) -> set[str]:
        done = set(before)
        for folder in (self.work / plan.LEASES).iterdir() if (self.work / plan.LEASES).is_dir() else []:
            if folder.name == "fill" and (folder / "fill.json").exists() or self._command_done(folder, folder.name):
                done.add(folder.name)
        return done

    def _seeds_now(self) -> dict[str, set[int]]:
        seeds = plan.finished_seeds(self.results / plan.STUDY)
        for net, more in plan.finished_seeds(self.runs).items():
            seeds.setdefault(net, set()).update(more)
        return seeds

    # --- what comes back
    def _archive(self) -> None:
        """runs.tar.gz: what finished (run logs without checkpoints, fill, command outputs); carry.tar.gz: what did
        not, with its checkpoints, as far as CARRY_MB allows (the rest starts again next time)."""
        self.out.mkdir(parents=True, exist_ok=True)
        leases = self.work / plan.LEASES
        folders = [(plan.STUDY, run, (run / "result.json").exists()) for run in _children(self.runs)]
        folders += [(plan.LEASES, f, f.name in self._done_now(set())) for f in _children(leases)]
        finished = [(kind, f) for kind, f, done in folders if done]
        partial = [(kind, f) for kind, f, done in folders if not done]
        with tarfile.open(self.out / "runs.tar.gz", "w:gz") as archive:
            for kind, folder in finished:
                archive.add(folder, f"{kind}/{folder.name}", filter=_without_checkpoints)
        carried, dropped = [], []
        with tarfile.open(self.out / "carry.tar.gz", "w:gz") as archive:
            budget = CARRY_MB
            for kind, folder in partial:
                size = _size_mb(folder)
                if size <= budget:
                    archive.add(folder, f"{kind}/{folder.name}")
                    carried.append(folder.name)
                    budget -= size
                else:
                    dropped.append(folder.name)
        self.record.update(carried=carried, dropped=dropped, finished=[f.name for _, f in finished])
        self.record["phases"]["lease_s"] = self.clock() - self.started
        parts = _split(self.out / "runs.tar.gz") + _split(self.out / "carry.tar.gz")
        self.record["files"] = [p.name for p in parts]
        if len(parts) + 1 > MAX_FILES:
            raise RuntimeError(f"{len(parts) + 1} files would come back; at most {MAX_FILES} do.")
        (self.out / "lease.json").write_text(json.dumps(self.record, indent=2))
        print(json.dumps({k: self.record[k] for k in ("device_kind", "finished", "carried", "left", "phases")}))


def _children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _without_checkpoints(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = info.name.split("/")
    return None if "checkpoints" in parts or "tensorboard" in parts else info


def _split(path: Path) -> list[Path]:
    """`path` as is when at most MAX_FILE bytes, else cut into `<name>.<k>` parts of at most MAX_FILE bytes."""
    data = path.read_bytes()
    if len(data) <= MAX_FILE:
        return [path]
    path.unlink()
    parts = []
    for k in range(plan.split_into_parts(len(data), MAX_FILE)):
        part = path.with_name(f"{path.name}.{k}")
        part.write_bytes(data[k * MAX_FILE : (k + 1) * MAX_FILE])
        parts.append(part)
    return parts


def _joined(folder: Path, name: str) -> bytes | None:
    """The bytes of `name` in `folder`, whole or from its parts; None if absent."""
    if (folder / name).exists():
        return (folder / name).read_bytes()
    parts = sorted(folder.glob(f"{name}.*"), key=lambda p: int(p.suffix[1:]))
    return b"".join(p.read_bytes() for p in parts) if parts else None


def _steps_done(run: Path) -> int:
    checkpoints = run / "checkpoints"
    steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.is_dir() else []
    return max(steps, default=0)


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _uptime() -> float | None:
    """Seconds since the machine booted: on a lent machine, its start-up, the transfer and the install before this
    command (the device tool's held_s less this lease's seconds gives the start-up before the boot)."""
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------- unpack, here
def unpack(source: Path, results: Path, results_md: Path | None = None) -> dict:
    """Merges what a lease brought back into `results`, regenerates the study's tables and figures, and appends the
    lease's phases and fill table to `results_md` (default: benchmarks/RESULTS.md for the repository's results,
    else <results>/RESULTS.md)."""
    from experiments import cifar_depth_study as study

    folder = source if source.is_dir() else source.parent
    record = _read_json(folder / "lease.json") or {}
    kind = record.get("device_kind", "unknown")
    merged: dict[str, list[str]] = {"runs": [], "leases": [], "carried": []}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for name, target in (("runs.tar.gz", scratch / "runs"), ("carry.tar.gz", scratch / "carry")):
            data = _joined(folder, name)
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
    for name in merged["runs"]:  # what finished is no longer carried
        shutil.rmtree(CACHE / name, ignore_errors=True)
    for name in merged["leases"]:
        shutil.rmtree(CACHE / plan.LEASES / name, ignore_errors=True)
    leases = results / plan.LEASES / kind
    leases.mkdir(parents=True, exist_ok=True)
    (leases / f"{record.get('started', 'lease').replace(':', '')}.json").write_text(json.dumps(record, indent=2))
    study_dir = results / plan.STUDY
    if study_dir.is_dir():
        study.collect(study_dir, list(study.DEFAULT_NETS) + ["resnet1202"])
        _figure7(study_dir)
        _runs_md(study_dir, merged["runs"], record)
    if results_md is None:
        results_md = REPO / "benchmarks" / "RESULTS.md" if results.resolve() == (REPO / "results").resolve() else None
    _results_md(results_md or results / "RESULTS.md", record, _read_json(leases / "fill" / "fill.json"), merged)
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
    programs = [i for i in record.get("items", []) if i.get("program")]
    if programs:
        lines += [
            "",
            "| program | finished | steps | set-up s | first dispatch s | loop s |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {i['program']} | {i.get('finished')} | {i.get('step', '')} | {i.get('setup_s') or 0:.0f} | "
            f"{i.get('first_dispatch_s') or 0:.0f} | {i.get('loop_s') or 0:.0f} |"
            for i in programs
        ]
    if fill and "fill" in merged["leases"]:
        lines += ["", "Filling the device (`python -m benchmarks.fill`, in the lease):", "", table(fill)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


def _figure7(study_dir: Path) -> None:
    """Figure 7 from the per-layer statistics measured on the trained nets: one line per net, its lowest seed."""
    from experiments.layer_responses import plot_figure7, read_responses

    by_net: dict[str, Path] = {}
    for csv in sorted(study_dir.glob("*/figure7.csv")):
        net = csv.parent.name.split("_seed")[0]
        if net not in by_net or plan._seeds_of(csv.parent.name)[0] < plan._seeds_of(by_net[net].parent.name)[0]:
            by_net[net] = csv
    if not by_net:
        return
    responses = read_responses([str(p) for p in by_net.values()])
    lines = ["net,layer_index,layer,std"] + [
        f"{net},{i + 1},{layer},{std:.6f}" for net, rows in responses.items() for i, (layer, std) in enumerate(rows)
    ]
    (study_dir / "figure7.csv").write_text("\n".join(lines) + "\n")
    plot_figure7({net: [s for _, s in rows] for net, rows in responses.items()}, str(study_dir / "figure7.png"))


def _runs_md(study_dir: Path, runs: list[str], record: dict) -> None:
    """Adds the runs a lease brought to RUNS.md, with the device and the lease's date."""
    if not runs:
        return
    path = study_dir / "RUNS.md"
    text = path.read_text() if path.exists() else "| run | device | date | how |\n|---|---|---|---|\n"
    device, date = record.get("device_kind", "?"), record.get("started", "?")[:10]
    for run in runs:
        text += f"| {run} | {device} | {date} | `python -m experiments.lease` |\n"
    path.write_text(text)


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.program:
        from resnet_jax.core import cli

        cli.initialize()
        train_program(json.loads(FLAGS.program))
        return
    if FLAGS.unpack:
        merged = unpack(Path(FLAGS.unpack), Path(FLAGS.results))
        print(json.dumps(merged))
        return
    if FLAGS.out is None:
        raise app.UsageError("--out (the folder for what comes back) is required.")
    if FLAGS.dry_run:
        import jax

        jax.config.update("jax_platforms", "cpu")
    Lease(Path(FLAGS.out), FLAGS.budget_s, FLAGS.dry_run).run()


if __name__ == "__main__":
    _define_flags()
    from resnet_jax.core import cli

    cli.define_distributed_flags()
    cli.run(main)
