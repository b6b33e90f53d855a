"""What a GPU lease runs: the committed agenda, what of it is finished, and what fits into the time left.

Everything here is pure (no JAX, no clock of its own), so the planner is tested with a fake clock and fake results.
`experiments/lease.py` runs what this module plans, and `--plan_only` prints it.

The agenda is ordered; an item done is skipped by every later lease, and a program that does not fit the time left
is passed over for the next one that does (so a lease always starts with the most important work that fits):
  (a) the first seed of the depth study's nets not run yet, in pairs (plain-k, ResNet-k);
  (b) seeds 1 and 2 of every net up to 56 layers, in pairs;
  (c) `fill`: how to fill this device kind with CIFAR runs (benchmarks/fill.py), about a minute, once per kind: its
      answer (several seeds in one program) shapes the study's programs after it;
  (d) `imagenet_loop`: ResNet-50 fed by grain against its bare step, torchvision's beside it, once per kind;
  (e) the full-schedule data control, and the independent PyTorch trainer (ResNet-20 and -56, 2 seeds);
  (f) the 110-layer nets (5 seeds of ResNet-110, 3 of plain-110).
Real work comes first: each program's own step times are this device kind's measurement (`paces`).
A study item is trained as programs: one net, several of its seeds in one program (`Members`), several programs at
once (processes), as the fill measurement chose for the device kind. A program starts only if it is expected to end
before the lease's deadline with a margin (`fits`): no run is started to be carried to a later lease.
Step times, best known first: those measured by earlier programs on this device kind (the lease records in
results/leases/<kind>/), the fill's bare step over `LOOP_EFFICIENCY`, the H100's bare step over it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from experiments.run_names import parse_run_name, run_name

STUDY = "cifar10_depth_study"  # results/<STUDY>/<run>: the depth study's runs, from every device and lease
LEASES = "leases"  # results/<LEASES>/<kind>/: each device kind's fill choice, command outputs and lease records
PAPER_STEPS = 64_000
# Seconds per step of one run at batch 128 where this device kind has no fill measurement yet: the H100's (2026-11-22,
# benchmarks/RESULTS.md), interpolated linearly in depth (a plain net costs its ResNet's).
PRIOR_STEP_S = {20: 0.00301, 56: 0.00967}
COMPILE_S = 60.0  # a program's set-up, compilation and first dispatch, where no lease measured it yet
LOOP_EFFICIENCY = 0.85  # the training loop's pace against the bare step (H100: 0.7-0.9 on grain, about 1 on the device)
MARGIN = 1.15  # a program must fit with its estimate times this ...
MARGIN_S = 20.0  # ... plus this: its end-of-run evaluation, Figure 7's statistics, the noise of a shared machine
MIN_START_S = 90.0  # no program starts with less time left than this
# A lease's own start where no lease of this kind measured it yet (the H200's first lease: 4 s and 31 s).
SETUP_S = {"install_s": 10.0, "data_s": 40.0}


@dataclasses.dataclass(frozen=True)
class Study:
    """Seeds `seeds` of each of `nets`, trained on the paper's full schedule."""

    name: str
    nets: tuple[str, ...]
    seeds: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Command:
    """A command run once per device kind, done when its folder under results/leases/<kind>/ holds `output` (the
    lease also keeps the command's output there, as stdout.txt, once it ends well).

    `argv` may use {out} (its output folder) and {data} (the kit's copy of ../shared/data); `needs`: files of
    ../shared/data the kit must carry for it (else it is skipped); `estimate_s`: its duration.
    """

    name: str
    argv: tuple[str, ...]
    output: str
    estimate_s: float
    needs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Fill:
    """The fill measurement (benchmarks/fill.py), at most `budget_s` seconds, once per device kind."""

    name: str = "fill"
    budget_s: float = 300.0


Item = Study | Command | Fill
_TO_56 = tuple(f"{kind}{depth}" for depth in (20, 32, 44, 56) for kind in ("plain", "resnet"))  # in pairs
AGENDA: tuple[Item, ...] = (
    Study("first seeds", ("plain32", "resnet32", "plain44", "resnet44", "plain56"), (0,)),
    Study("seeds 1 and 2", _TO_56, (1, 2)),
    Fill(budget_s=60.0),
    Command(
        "imagenet_loop",
        ("python", "-m", "benchmarks.imagenet_loop", "--data={data}", "--torch", "--worker_count=16"),
        "stdout.txt",
        180.0,
        needs=("imagenet_samples",),
    ),
    Command(
        "data_control",
        ("python", "-m", "experiments.data_control", "--workdir={out}", "--shared={data}/cifar10"),
        "control.json",
        420.0,
        needs=("cifar10/cifar10_original_labels_and_lossless_prefix.npz", "cifar10/cifar10_jpeg_index.csv"),
    ),
    *(
        Command(
            f"torch_reference_{depth}_s{seed}",
            (
                "python",
                "-m",
                "experiments.torch_cifar_reference",
                f"--depth={depth}",
                f"--seed={seed}",
                "--output={out}",
                "--data={data}/cifar10/cifar-10-images-jpg.tar.gz",
                "--max_seconds=480",
            ),
            "result.json",
            {20: 300.0, 56: 700.0}[depth],
        )
        for depth in (20, 56)
        for seed in (0, 1)
    ),
    Study("ResNet-110", ("resnet110",), (0, 1, 2, 3, 4)),
    Study("plain-110", ("plain110",), (0, 1, 2)),
)
"""The committed agenda, in order (see the module docstring)."""


@dataclasses.dataclass(frozen=True)
class Program:
    """Seeds `seeds` of `net` trained together in one program, in the run folder `run`."""

    net: str
    seeds: tuple[int, ...]

    @property
    def run(self) -> str:
        """The run's folder name, as the depth study names it (`run_names`)."""
        return run_name(self.net, self.seeds)


@dataclasses.dataclass(frozen=True)
class Shape:
    """How the study fills the device: `members` seeds per program as `mode`, `processes` programs at once."""

    mode: str = "auto"
    members: int = 1
    processes: int = 1

    @classmethod
    def from_fill(cls, fill: dict | None) -> Shape:
        """The shape a fill measurement chose (its `choice`); one run at a time without one."""
        choice = (fill or {}).get("choice") or {}
        mode = choice.get("mode", "auto")
        return cls(
            "auto" if mode in ("single", "processes") else mode, choice.get("members", 1), choice.get("processes", 1)
        )


def finished_seeds(study: Path) -> dict[str, set[int]]:
    """{net: seeds with a final result} over the run folders of `study` (results/cifar10_depth_study)."""
    done: dict[str, set[int]] = {}
    for run in sorted(study.iterdir()) if study.is_dir() else []:
        parsed = parse_run_name(run.name)
        if parsed and (run / "result.json").exists():
            done.setdefault(parsed[0], set()).update(parsed[1])
    return done


def pending_programs(
    item: Study, done: dict[str, set[int]], shape: Shape, carried: Iterable[str] = ()
) -> list[Program]:
    """The programs that train what `item` still lacks: per net, its missing seeds in groups of `shape.members`
    (consecutive seeds, so that each group is one run folder). A carried (partial) run resumes as the same program."""
    carried_seeds = {}
    for run in carried:  # a partial run from an earlier lease keeps its seeds: its checkpoint holds those members
        parsed = parse_run_name(run)
        if parsed and parsed[0] in item.nets:
            carried_seeds[run] = parsed
    programs = []
    for net in item.nets:
        missing = [s for s in item.seeds if s not in done.get(net, set())]
        groups = [list(seeds) for of, seeds in carried_seeds.values() if of == net and set(seeds) <= set(missing)]
        taken = {s for g in groups for s in g}
        group: list[int] = []
        for seed in (s for s in missing if s not in taken):
            if group and (seed != group[-1] + 1 or len(group) == shape.members):
                groups.append(group)
                group = []
            group.append(seed)
        groups += [group] if group else []
        programs += [Program(net, tuple(g)) for g in sorted(groups)]
    return programs


def _depth(net: str) -> int:
    return int(re.sub(r"\D", "", net))


def paces(records: Iterable[dict]) -> dict:
    """What earlier programs on one device kind measured, from lease records (lease.json, kept in
    results/leases/<kind>/ by `--unpack`; the running lease adds its own): {"step_s": {"<net>x<members>": seconds
    per training step of the loop, evaluations and saves included}, "overhead_s": the longest set-up, compilation and
    first dispatch of a program, "install_s"/"data_s": the longest of the lease's own start}. Later records win."""
    found: dict = {"step_s": {}}
    for record in records:
        for name in SETUP_S:
            value = (record.get("phases") or {}).get(name)
            if value is not None:
                found[name] = max(found.get(name, 0.0), value)
        for item in record.get("items", []):
            if item.get("seconds_per_step"):
                found["step_s"][f"{item['net']}x{item['members']}"] = item["seconds_per_step"]
            if item.get("overhead_s"):
                found["overhead_s"] = max(found.get("overhead_s", 0.0), item["overhead_s"])
    return found


def read_paces(kind_folder: Path) -> dict:
    """`paces` of every lease record in results/leases/<kind>/ (files named by the lease's start), oldest first."""
    records = sorted(kind_folder.glob("*.json")) if kind_folder.is_dir() else []
    return paces(json.loads(path.read_text()) for path in records)


def step_seconds(net: str, members: int, fill: dict | None, measured: dict | None = None) -> float:
    """Seconds per loop step of a program of `members` seeds of `net` on this device kind, best known first: measured
    by an earlier program of that many members (`paces`; other depths linear in depth, one depth scales the prior);
    from the fill measurement (the figure of that many members in the chosen mode, or the nearest measured) over
    LOOP_EFFICIENCY; else the H100's single-run bare step over LOOP_EFFICIENCY. Plain and residual nets of one depth
    cost the same."""
    depth = _depth(net)
    loop = {
        _depth(key.split("x")[0]): seconds
        for key, seconds in (measured or {}).get("step_s", {}).items()
        if int(key.split("x")[1]) == members
    }
    if depth in loop:
        return loop[depth]
    bare = _bare_step_seconds(depth, members, fill) / LOOP_EFFICIENCY
    if len(loop) == 1:  # one measured depth: the prior's shape, at the measured pace
        ((d, seconds),) = loop.items()
        return bare * seconds / (_bare_step_seconds(d, members, fill) / LOOP_EFFICIENCY)
    if len(loop) >= 2:
        return _linear(loop, depth)
    return bare


def _bare_step_seconds(depth: int, members: int, fill: dict | None) -> float:
    measured: dict[int, float] = {}
    for figure in (fill or {}).get("figures", []):
        if "error" in figure or figure.get("dtype", "float32") != "float32" or figure.get("xla_flags"):
            continue
        if figure["mode"] == "processes":
            continue
        runs = figure["members"]
        seconds_per_step = figure["seconds"] / (figure["images"] / (runs * 128))
        key = _depth(figure["net"])
        if runs == members or (runs >= members and key not in measured):
            measured[key] = seconds_per_step
    if len(measured) < 2:
        measured = {d: s * members for d, s in PRIOR_STEP_S.items()}  # one run's steps, one after the other
    return _linear(measured, depth)


def _linear(measured: dict[int, float], depth: int) -> float:
    """Linear in depth through the two shallowest measured depths (never under half the cheaper one)."""
    (d0, s0), (d1, s1) = sorted(measured.items())[:2]
    return max(s0 + (s1 - s0) * (depth - d0) / (d1 - d0), min(s0, s1) / 2)


def estimate_s(
    program: Program, steps_done: int, fill: dict | None, steps: int = PAPER_STEPS, measured: dict | None = None
) -> float:
    """How long `program` takes from `steps_done` to the end: its set-up, compilation and first dispatch, then its
    steps at the loop's pace."""
    overhead = (measured or {}).get("overhead_s", COMPILE_S)
    return overhead + (steps - steps_done) * step_seconds(program.net, len(program.seeds), fill, measured)


def fits(estimate: float, remaining_s: float) -> bool:
    """Whether something estimated at `estimate` seconds ends within `remaining_s` with the planner's margin."""
    return estimate * MARGIN + MARGIN_S <= remaining_s


def should_start(
    program: Program,
    steps_done: int,
    remaining_s: float,
    fill: dict | None,
    steps: int = PAPER_STEPS,
    min_start_s: float = MIN_START_S,
    measured: dict | None = None,
    processes: int = 1,
) -> bool:
    """Whether a program is expected to finish, with the margin, in `remaining_s` (never with less than `min_start_s`
    left); `processes` programs sharing the device each take that many times as long (a conservative guess)."""
    if remaining_s < min_start_s:
        return False
    return fits(processes * estimate_s(program, steps_done, fill, steps, measured), remaining_s)


def checkpoint_mb(net: str, members: int) -> float:
    """Size of a checkpoint of `members` seeds of `net`: parameters, momentum and BN statistics in float32."""
    n = (_depth(net) - 2) // 6
    params = 16 * 27 + sum(2 * n * 9 * w * w for w in (16, 32, 64)) + 64 * 10  # conv kernels dominate
    return members * params * 4 * 2 / 2**20 + 0.1


def simulate(
    agenda: Sequence[Item],
    done_items: set[str],
    done_seeds: dict[str, set[int]],
    fill: dict | None,
    measured: dict,
    deadline_s: float,
    steps: int = PAPER_STEPS,
    steps_done: dict[str, int] | None = None,
) -> list[dict]:
    """The lease's plan on a clock that starts at the command's start: [{"item", "program"?, "start_s", "end_s"} or
    {"item", "program"?, "skipped"}], by the rules the lease follows (agenda order, `fits`, the shape of the fill).
    `deadline_s` is the seconds from the command's start to the lease's deadline."""
    clock = sum(measured.get(name, default) for name, default in SETUP_S.items())
    rows: list[dict] = []
    for item in next_items(agenda, done_items, done_seeds):
        if isinstance(item, Fill):
            budget = fill_budget(item, deadline_s - clock, MIN_START_S)
            if budget is None:
                rows.append({"item": item.name, "skipped": "no time"})
                continue
            rows.append({"item": item.name, "start_s": clock, "end_s": clock + budget + 30})
            clock += budget + 30
        elif isinstance(item, Command):
            if deadline_s - clock < MIN_START_S or not fits(item.estimate_s, deadline_s - clock):
                rows.append({"item": item.name, "skipped": f"needs ~{item.estimate_s:.0f} s"})
                continue
            rows.append({"item": item.name, "start_s": clock, "end_s": clock + item.estimate_s})
            clock += item.estimate_s
        else:
            shape = Shape.from_fill(fill)
            slots = [clock] * shape.processes
            for program in pending_programs(item, done_seeds, shape):
                slot = min(range(len(slots)), key=slots.__getitem__)
                done = (steps_done or {}).get(program.run, 0)
                if not should_start(
                    program, done, deadline_s - slots[slot], fill, steps, measured=measured, processes=shape.processes
                ):
                    rows.append({"item": item.name, "program": program.run, "skipped": "would not finish"})
                    continue
                length = shape.processes * estimate_s(program, done, fill, steps, measured)
                rows.append(
                    {"item": item.name, "program": program.run, "start_s": slots[slot], "end_s": slots[slot] + length}
                )
                slots[slot] += length
            clock = max(slots)
    return rows


def fill_budget(item: Fill, remaining_s: float, min_start_s: float = MIN_START_S) -> float | None:
    """The fill's seconds with `remaining_s` left (it leaves `min_start_s` to what follows); None if under half its
    budget, too little to answer anything."""
    budget = min(item.budget_s, remaining_s - min_start_s)
    return budget if budget >= item.budget_s / 2 else None


def fill_done(fill: dict | None) -> bool:
    """Whether a fill measurement answered everything it was asked (a cut one is measured again when reached)."""
    return bool(fill) and not fill.get("not_measured")


def split_into_parts(size: int, limit: int) -> int:
    """How many files of at most `limit` bytes `size` bytes take."""
    return max(1, math.ceil(size / limit))


def next_items(agenda: Sequence[Item], done_items: set[str], done_seeds: dict[str, set[int]]) -> list[Item]:
    """The agenda's items not done yet, in order (a study item is done when all its seeds are)."""
    left = []
    for item in agenda:
        if isinstance(item, Study):
            if all(set(item.seeds) <= done_seeds.get(net, set()) for net in item.nets):
                continue
        elif item.name in done_items:
            continue
        left.append(item)
    return left
