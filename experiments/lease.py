"""One command turns a GPU lease into finished runs; one more brings them home.

On the lease machine (its command line is in the README, "GPU leases"; the kit comes from experiments/lease_kit.py):

    python3 -m experiments.lease_preflight && <install the kit's wheels> && python3 -m experiments.lease \
        --budget_s=LIMIT --out=$OUT

takes the committed agenda's next items (experiments/lease_plan.py: the depth study's missing seeds first, then a
short fill measurement, the benchmarks and controls) and starts each program only if it is expected to end before the
deadline with a margin, at the step times measured on this device kind by earlier programs (results/leases/<kind>/),
else by the fill, else the H100's. The deadline is `--budget_s` (the device call's limit, less a margin) from the
command's start (`$LEASE_T0`, set before the install, else this process's start), less a reserve for the end.
Everything is under try/finally: a program that overruns is stopped (SIGTERM, then SIGKILL) and whatever finished is
in `--out` at once, as at most 8 files of at most 16 MB, each rewritten the moment something finishes:
`lease.json` (what ran, each program's pace, the phases), `lease.log` (this command's progress lines), `runs.tar.gz`
(the finished runs' logs, with Figure 7's per-layer statistics measured right after each net finished; the fill
figures; the commands' outputs), `logs.tar.gz` (every child's log, its last 256 KiB), and at the end `carry.tar.gz`
(runs cut short, with their newest checkpoint) and `jax_cache.tar.gz` (the compiled programs, for the next lease).

Back here, with no GPU:

    python -m experiments.lease --unpack=DIR [--results=results]

merges what came back into `--results` (experiments/lease_unpack.py). `--dry_run` runs all of it on the CPU with a
20-step schedule and a tiny agenda; `--plan_only` prints the plan for a device kind and exits.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from absl import app, flags

from experiments import lease_files, lease_unpack
from experiments import lease_plan as plan
from experiments.lease_files import REPO
from resnet_jax.core import files

CARRY_MB = 20.0  # checkpoints carried to the next lease: what the 60 MiB that travels leaves beside the kit
RESERVE_S = 45.0  # the end of a lease: the last saves, Figure 7, the archive
GRACE_S = 15.0  # a program still running this long after the deadline is stopped (SIGTERM, then SIGKILL 10 s later)
LOG_TAIL = 256 * 2**10  # what comes back of each child's log
DRY_STEPS = 20  # a dry run's schedule

FLAGS = flags.FLAGS


def _define_flags() -> None:  # at run time, not at import: scripts import each other's functions
    flags.DEFINE_float(
        "budget_s",
        540,
        "Seconds this command may take in all, from $LEASE_T0 if set (the device call's limit, less a margin).",
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
    flags.DEFINE_bool("plan_only", False, "Print the plan for --kind within --budget_s, run nothing.")
    flags.DEFINE_string("kind", "nvidia_h200", "--plan_only: the device kind (a folder of results/leases/).")
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
    """The CPU rehearsal's agenda: the first seed of two nets on a short schedule, then a tiny fill."""
    return (plan.Study("first seeds", ("plain20", "resnet20"), (0,)), plan.Fill(budget_s=40))


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
    """Trains one program until its deadline, then (finished) measures Figure 7's responses of its first seed.
    Writes program.json: whether it finished, its pace (seconds per loop step, evaluations and saves included) and
    its overhead (set-up, compilation and first dispatch), which the next programs' estimates use."""
    from resnet_jax.run.rundir import RunDir
    from resnet_jax.train.loop import Trainer

    program = plan.Program(spec["net"], tuple(spec["seeds"]))
    workdir = Path(spec["workdir"])
    config = program_config(program, Path(spec["tfds"]), plan.Shape(**spec["shape"]), spec["dry_run"])
    started = time.time()
    trainer = Trainer(config, str(workdir), deadline=spec["deadline"])
    first_step = trainer.step
    result = trainer.run()
    ended = time.time()
    timings = trainer.timings
    overhead = timings["setup_s"] + (timings["first_dispatch_s"] or 0.0)
    steps_timed = trainer.step - first_step - config.steps_per_dispatch  # the first dispatch is in the overhead
    loop_s = ended - started - overhead
    record = {
        "program": spec,
        "net": program.net,
        "members": len(program.seeds),
        "finished": result is not None,
        "step": trainer.step,
        "steps_run": trainer.step - first_step,
        "overhead_s": overhead,
        "seconds_per_step": loop_s / steps_timed if steps_timed > 0 else None,
        **timings,
    }
    if result is not None:
        from experiments.layer_responses import write_run_responses

        started = time.perf_counter()
        write_run_responses(workdir, program.net)
        record["figure7_s"] = time.perf_counter() - started
    (RunDir(workdir).path / "program.json").write_text(json.dumps(record, indent=2))


# ------------------------------------------------------------------------------------------- the lease
class Lease:
    """One lease: its clock and deadline, its record, the items it runs in agenda order, and what it sends back."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool, clock=time.time, t0: float | None = None):
        self.clock = clock
        self.started = clock() if t0 is None else t0  # the command's start: before the install, where it is known
        self.deadline = self.started + budget_s - RESERVE_S
        self.out, self.dry_run = out, dry_run
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(FLAGS.work)
        # A dry run's quick-schedule runs are not the study's: it starts from empty results of its own.
        self.results = self.work / "results" if dry_run else Path(FLAGS.results)
        self.kit, self.carry = Path(FLAGS.kit), Path(FLAGS.carry)
        # This lease's own folder: a machine kept warm between two device calls still has the last one's runs
        # there, which are not this lease's; the prepared data and the compilation cache beside it are reused.
        self.scratch = self.work / f"lease-{self.started:.0f}"
        self.runs = self.scratch / plan.STUDY
        self.logs = self.scratch / "logs"
        self.steps = DRY_STEPS if dry_run else plan.PAPER_STEPS
        self.min_start_s = 20.0 if dry_run else plan.MIN_START_S
        self.kind = "unknown"
        self.running: list[tuple[plan.Program, subprocess.Popen, float]] = []
        self.measured: dict = {"step_s": {}}
        self.agenda: tuple[plan.Item, ...] | None = None
        self.done_items: set[str] = set()
        self.record: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))}
        self.record["budget_s"] = budget_s
        self.record["phases"] = {"machine_uptime_at_start_s": _uptime(), "install_s": clock() - self.started}
        self.record["items"] = []

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def say(self, message: str) -> None:
        """One progress line, with the seconds since the command's start, to stdout and lease.log."""
        line = f"[lease {self.clock() - self.started:6.0f} s] {message}"
        print(line, flush=True)
        with open(self.out / "lease.log", "a") as f:
            f.write(line + "\n")

    def run(self) -> None:
        """Runs the agenda; however it ends (done, the deadline, SIGTERM, a bug), what finished is in --out."""
        try:
            self._run()
        except BaseException as error:
            self.record["error"] = f"{type(error).__name__}: {error}"
            self.say(f"stopped: {self.record['error']}")
            raise
        finally:
            self._stop_children()
            self._archive()

    def _run(self) -> None:
        self.kind = device_kind()
        self.record["device_kind"] = self.kind
        self.say(f"device kind {self.kind}; deadline in {self.remaining():.0f} s")
        # What earlier leases of this kind left: the same reading as the plan's (`plan_inputs`).
        _, done_items, _, fill, self.measured = plan_inputs(self.kind, self.results)
        started = self.clock()
        self._prepare_cifar()
        self.record["phases"]["data_s"] = self.clock() - started
        self.say(f"data ready in {self.record['phases']['data_s']:.0f} s")
        self._publish()
        carried = self._bring_carried()
        self.agenda, self.done_items = dry_agenda() if self.dry_run else plan.AGENDA, done_items
        for item in plan.next_items(self.agenda, done_items, plan.finished_seeds(self.results / plan.STUDY)):
            if self.remaining() < self.min_start_s:
                break
            if isinstance(item, plan.Fill):
                fill = self._fill(item) or fill
            elif isinstance(item, plan.Study):
                self._study(item, fill, carried)
            else:
                self._command(item)
            self._publish()

    def paces(self) -> dict:
        """What earlier leases of this kind measured, updated by this lease's own programs."""
        mine = plan.paces([{"items": self.record["items"]}])
        merged = {**self.measured, **{k: v for k, v in mine.items() if k != "step_s"}}
        merged["step_s"] = {**self.measured.get("step_s", {}), **mine["step_s"]}
        return merged

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
        """Copies the runs carried from earlier leases into this lease's runs; returns their names. Seeds the
        compilation cache with the one carried for this device kind."""
        self.runs.mkdir(parents=True, exist_ok=True)
        cache = self.carry / "jax_cache" / self.kind
        if cache.is_dir():
            shutil.copytree(cache, self.work / "jax_cache", dirs_exist_ok=True)
        names = set()
        for run in sorted(self.carry.iterdir()) if self.carry.is_dir() else []:
            if run.is_dir() and run.name not in (plan.LEASES, "jax_cache") and not (self.runs / run.name).exists():
                shutil.copytree(run, self.runs / run.name)
                names.add(run.name)
        return names

    def _fill(self, item: plan.Fill) -> dict | None:
        budget = plan.fill_budget(item, self.remaining(), self.min_start_s)
        if budget is None:
            self.record["items"].append({"item": "fill", "skipped": "no time"})
            return None
        out = self.out_folder("fill")
        argv = [sys.executable, "-m", "benchmarks.fill", f"--out={out / 'fill.json'}", f"--budget_s={budget:.0f}"]
        if self.dry_run:
            argv += ["--tiny", "--members=2", "--processes=2", "--dispatches=1"]
        started = self.clock()
        self.say(f"fill: at most {budget:.0f} s")
        code = self._call(argv, out / "stdout.txt", timeout=budget + 30)
        self.record["items"].append({"item": "fill", "exit": code, "seconds": self.clock() - started})
        return lease_files.read_json(out / "fill.json")

    def _command(self, item: plan.Command) -> None:
        missing = [need for need in item.needs if not (self.kit / "data" / need).exists()]
        if missing or not plan.fits(item.estimate_s, self.remaining()):
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
        self.say(f"{item.name}: started")
        code = self._call(argv, out / "stdout.partial", timeout=max(self.remaining() + GRACE_S, 1))
        if code == 0:
            (out / "stdout.partial").replace(out / "stdout.txt")
        self.record["items"].append({"item": item.name, "exit": code, "seconds": self.clock() - started})
        self.say(f"{item.name}: exit {code} after {self.clock() - started:.0f} s")

    def _study(self, item: plan.Study, fill: dict | None, carried: set[str]) -> None:
        shape = plan.Shape.from_fill(fill)
        programs = plan.pending_programs(item, plan.finished_seeds(self.results / plan.STUDY), shape, carried)
        while programs or self.running:
            while programs and len(self.running) < shape.processes:
                program = programs.pop(0)
                steps_done = _steps_done(self.runs / program.run)
                measured = self.paces()
                if not plan.should_start(
                    program,
                    steps_done,
                    self.remaining(),
                    fill,
                    self.steps,
                    self.min_start_s,
                    measured,
                    shape.processes,
                ):
                    estimate = plan.estimate_s(program, steps_done, fill, self.steps, measured)
                    self.record["items"].append(
                        {"item": item.name, "program": program.run, "skipped": f"would not finish (~{estimate:.0f} s)"}
                    )
                    self.say(f"{program.run}: not started, ~{estimate:.0f} s against {self.remaining():.0f} s left")
                    continue
                self.running.append((program, self._start_program(program, shape), self.clock()))
                estimate = plan.estimate_s(program, steps_done, fill, self.steps, measured)
                self.say(f"{program.run}: started from step {steps_done}, expected to take ~{estimate:.0f} s")
            time.sleep(1.0)
            self._stop_children(only_overdue=True)
            for entry in [e for e in self.running if e[1].poll() is not None]:
                self.running.remove(entry)
                self._program_ended(item, *entry)

    def _program_ended(self, item: plan.Study, program: plan.Program, process: subprocess.Popen, started: float):
        record = lease_files.read_json(self.runs / program.run / "program.json") or {}
        self.record["items"].append(
            {
                "item": item.name,
                "program": program.run,
                "exit": process.returncode,
                "seconds": self.clock() - started,
                **{k: v for k, v in record.items() if k != "program"},
            }
        )
        pace = record.get("seconds_per_step")
        self.say(
            f"{program.run}: exit {process.returncode} after {self.clock() - started:.0f} s, "
            f"finished {record.get('finished')}, step {record.get('step')}"
            + (f", {pace * 1e3:.2f} ms per step" if pace else "")
        )
        self._publish()

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
        env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
        env.update(XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / shape.processes:.3f}", PYTHONUNBUFFERED="1")
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{program.run}.log", "a")
        argv = [sys.executable, "-m", "experiments.lease", f"--program={json.dumps(spec)}", "--work", str(self.work)]
        argv += [f"--compilation_cache={self.work / 'jax_cache'}"]
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def _stop_children(self, only_overdue: bool = False) -> None:
        """Stops the programs still running: past the deadline and its grace (only_overdue), or all (the end).
        SIGTERM first (the trainer saves, as at a preemption), SIGKILL 10 s later."""
        if only_overdue and self.clock() < self.deadline + GRACE_S:
            return
        for program, process, _ in self.running:
            if process.poll() is None:
                self.say(f"{program.run}: still running, stopped (SIGTERM)")
                process.terminate()
        for program, process, _ in self.running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.say(f"{program.run}: killed (SIGKILL)")
                process.kill()
                process.wait()

    def _call(self, argv: list[str], log: Path, timeout: float) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            try:
                return subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                return -1

    def out_folder(self, name: str) -> Path:
        folder = self.scratch / plan.LEASES / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _done_now(self, before: set[str]) -> set[str]:
        return before | items_done(self.scratch / plan.LEASES)

    def _seeds_now(self) -> dict[str, set[int]]:
        seeds = plan.finished_seeds(self.results / plan.STUDY)
        for net, more in plan.finished_seeds(self.runs).items():
            seeds.setdefault(net, set()).update(more)
        return seeds

    # --- what comes back
    def _folders(self) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
        """(finished, not finished) as (kind, folder): the study's runs and the commands' output folders."""
        folders = [(plan.STUDY, run, (run / "result.json").exists()) for run in _children(self.runs)]
        leases = self.scratch / plan.LEASES
        folders += [(plan.LEASES, f, f.name in self._done_now(set())) for f in _children(leases)]
        return [(k, f) for k, f, done in folders if done], [(k, f) for k, f, done in folders if not done]

    def _publish(self) -> None:
        """Rewrites runs.tar.gz (what finished, without checkpoints), logs.tar.gz and lease.json in --out, each
        replaced whole (a cut at any moment leaves the previous version or the new one)."""
        finished, _ = self._folders()
        self.record["finished"] = [f.name for _, f in finished]
        with files.replacing(self.out / "runs.tar.gz") as path, tarfile.open(path, "w:gz") as archive:
            for kind, folder in finished:
                archive.add(folder, f"{kind}/{folder.name}", filter=_without_checkpoints)
        with files.replacing(self.out / "logs.tar.gz") as path, tarfile.open(path, "w:gz") as archive:
            for log in sorted(self.logs.glob("*.log")) if self.logs.is_dir() else []:
                data = log.read_bytes()[-LOG_TAIL:]
                info = tarfile.TarInfo(f"logs/{log.name}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        self.record["phases"]["lease_s"] = self.clock() - self.started
        files.write_atomically(self.out / "lease.json", json.dumps(self.record, indent=2))

    def _archive(self) -> None:
        """The end, however the lease ended: what finished (`_publish`); carry.tar.gz: the runs cut short, each with
        its newest checkpoint, as far as CARRY_MB allows; jax_cache.tar.gz: the compiled programs, if under 16 MB."""
        if self.agenda is not None:  # else the lease stopped before it read the agenda
            self.record["left"] = [
                item.name for item in plan.next_items(self.agenda, self._done_now(self.done_items), self._seeds_now())
            ]
        _, partial = self._folders()
        carried, dropped = [], []
        with files.replacing(self.out / "carry.tar.gz") as path, tarfile.open(path, "w:gz") as archive:
            budget = CARRY_MB
            for kind, folder in partial:
                size = _size_mb(folder, newest_checkpoint_only=True)
                if size <= budget:
                    archive.add(folder, f"{kind}/{folder.name}", filter=_newest_checkpoint_only(folder))
                    carried.append(folder.name)
                    budget -= size
                else:
                    dropped.append(folder.name)
        self.record.update(carried=carried, dropped=dropped)
        cache = self.work / "jax_cache"
        if cache.is_dir() and _size_mb(cache) * 2**20 <= lease_files.MAX_FILE:
            with files.replacing(self.out / "jax_cache.tar.gz") as path, tarfile.open(path, "w:gz") as archive:
                archive.add(cache, f"jax_cache/{self.kind}")
        self._publish()
        parts = lease_files.split(self.out / "runs.tar.gz") + lease_files.split(self.out / "carry.tar.gz")
        self.record["files"] = sorted(p.name for p in self.out.iterdir())
        limit = lease_files.MAX_FILES
        if len(self.record["files"]) > limit:
            self.say(f"{len(self.record['files'])} files would come back, at most {limit} do: carry dropped")
            for part in parts:
                if part.name.startswith("carry"):
                    part.unlink()
        files.write_atomically(self.out / "lease.json", json.dumps(self.record, indent=2))
        summary = {k: self.record.get(k) for k in ("device_kind", "finished", "carried", "left", "phases")}
        self.say("done: " + json.dumps(summary))


def _newest_checkpoint_only(run: Path):
    """A tarfile filter that keeps a run's newest checkpoint and drops the older ones."""
    newest = _steps_done(run)

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = info.name.split("/")
        if "checkpoints" in parts:
            below = parts[parts.index("checkpoints") + 1 :]
            if below and below[0].isdigit() and int(below[0]) != newest:
                return None
        return info

    return keep


def items_done(folder: Path) -> set[str]:
    """The agenda's measurement items done in `folder` (results/leases/<kind>/, or a lease's own): the fill when it
    answered everything, a command when its output is there."""
    done = set()
    for item in _children(folder):
        if item.name == "fill":
            if plan.fill_done(lease_files.read_json(item / "fill.json")):
                done.add("fill")
            continue
        command = next((i for i in plan.AGENDA if isinstance(i, plan.Command) and i.name == item.name), None)
        if command is not None and (item / command.output).exists():
            done.add(item.name)
    return done


def _children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _without_checkpoints(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    from resnet_jax.run.rundir import LOCAL_ONLY  # as in train_program: the parent imports no JAX at start

    return None if set(info.name.split("/")) & set(LOCAL_ONLY) else info


def _steps_done(run: Path) -> int:
    from resnet_jax.run.rundir import RunDir  # as in train_program: the parent imports no JAX at start

    return max(RunDir(run).saved_steps(), default=0)


def _size_mb(path: Path, newest_checkpoint_only: bool = False) -> float:
    if not path.exists():
        return 0.0
    keep = _newest_checkpoint_only(path) if newest_checkpoint_only else (lambda info: info)
    files = (f for f in path.rglob("*") if f.is_file())
    return sum(f.stat().st_size for f in files if keep(tarfile.TarInfo(str(f.relative_to(path))))) / 2**20


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _uptime() -> float | None:
    """Seconds since the machine booted: on a lent machine, its start-up, the transfer and the install before this
    command (the device tool's held_s less this lease's seconds gives the start-up before the boot)."""
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError):
        return None


def plan_inputs(kind: str, results: Path) -> tuple:
    """(agenda, done items, finished seeds, fill, measured paces) of a lease on `kind`, from the committed results:
    what `lease_plan.simulate` needs before the deadline."""
    kind_results = results / plan.LEASES / kind
    fill = lease_files.read_json(kind_results / "fill" / "fill.json")
    done_items = items_done(kind_results)
    done_seeds = plan.finished_seeds(results / plan.STUDY)
    return plan.AGENDA, done_items, done_seeds, fill, plan.read_paces(kind_results)


def plan_only(kind: str, budget_s: float, results: Path) -> list[dict]:
    """Prints the plan of a lease of `budget_s` on `kind` from the committed results, as the lease would follow it."""
    inputs = plan_inputs(kind, results)
    fill, measured = inputs[3], inputs[4]
    deadline = budget_s - RESERVE_S
    rows = plan.simulate(*inputs, deadline)
    known = "measured" if measured["step_s"] else ("the fill's" if fill else "the H100's prior")
    print(f"Plan for a lease on {kind}: --budget_s={budget_s:.0f}, deadline at {deadline:.0f} s; step times: {known}")
    for row in rows:
        what = f"{row['item']}: {row['program']}" if "program" in row else row["item"]
        if "skipped" in row:
            print(f"  {what:<36} not started: {row['skipped']}")
        else:
            margin = deadline - row["end_s"]
            print(f"  {what:<36} {row['start_s']:5.0f} s -> {row['end_s']:5.0f} s  (margin {margin:4.0f} s)")
    return rows


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.program:
        from resnet_jax.core import cli

        cli.initialize()
        train_program(json.loads(FLAGS.program))
        return
    if FLAGS.unpack:
        merged = lease_unpack.unpack(Path(FLAGS.unpack), Path(FLAGS.results))
        print(json.dumps(merged))
        return
    if FLAGS.plan_only:
        plan_only(FLAGS.kind, FLAGS.budget_s, Path(FLAGS.results))
        return
    if FLAGS.out is None:
        raise app.UsageError("--out (the folder for what comes back) is required.")
    # This process only watches: it must not hold the GPU's memory that its programs are given.
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if FLAGS.dry_run:
        import jax

        jax.config.update("jax_platforms", "cpu")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("SIGTERM: the lease stops; what finished is in --out"))
    t0 = _float(os.environ.get("LEASE_T0"))
    Lease(Path(FLAGS.out), FLAGS.budget_s, FLAGS.dry_run, t0=t0).run()


if __name__ == "__main__":
    _define_flags()
    from resnet_jax.core import cli

    cli.define_distributed_flags()
    cli.run(main)
