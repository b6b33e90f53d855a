"""What a GPU lease runs: the committed agenda, what of it is finished, and what fits into the time left.

Everything here is pure (no JAX, no clock of its own), so the planner is tested with a fake clock and fake results.
`experiments/lease.py` runs what this module plans.

The agenda is ordered; an item done is skipped by every later lease:
  (a) `fill`: how to fill this device kind with CIFAR runs (benchmarks/fill.py), once per kind;
  (b) the first seed of the depth study's nets not run yet;
  (c) `imagenet_loop`: ResNet-50 fed by grain against its bare step, torchvision's beside it, once per kind;
  (d) seeds 1 and 2 of every net up to 56 layers;
  (e) the full-schedule data control, and the independent PyTorch trainer (ResNet-20 and -56, 2 seeds);
  (f) the 110-layer nets (5 seeds of ResNet-110, 3 of plain-110) and mmpretrain's CIFAR ResNet-18, across leases.
A study item is trained as programs: one net, several of its seeds in one program (`Members`), several programs at
once (processes), as the fill measurement chose for the device kind.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

STUDY = "cifar10_depth_study"  # results/<STUDY>/<run>: the depth study's runs, from every device and lease
LEASES = "leases"  # results/<LEASES>/<kind>/: each device kind's fill choice, command outputs and lease records
PAPER_STEPS = 64_000
# Seconds per step of one run at batch 128 where this device kind has no fill measurement yet: the H100's (2026-11-22,
# benchmarks/RESULTS.md), interpolated linearly in depth (a plain net costs its ResNet's).
PRIOR_STEP_S = {20: 0.00301, 56: 0.00967}
COMPILE_S = 60.0  # a program's compilation and first evaluation, before its first measurement
MIN_START_S = 90.0  # no program starts with less time left than this


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
_TO_56 = tuple(f"{kind}{depth}" for kind in ("plain", "resnet") for depth in (20, 32, 44, 56))
AGENDA: tuple[Item, ...] = (
    Fill(),
    Study("first seeds", ("plain32", "plain44", "plain56", "resnet32", "resnet44"), (0,)),
    Command(
        "imagenet_loop",
        ("python", "-m", "benchmarks.imagenet_loop", "--data={data}", "--torch", "--worker_count=16"),
        "stdout.txt",
        180.0,
        needs=("imagenet_samples",),
    ),
    Study("seeds 1 and 2", _TO_56, (1, 2)),
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
        """The run's folder name, as the depth study names it: `<net>_seed<s>` or `<net>_seeds<a>-<b>`."""
        first, last = self.seeds[0], self.seeds[-1]
        return f"{self.net}_seed{first}" if len(self.seeds) == 1 else f"{self.net}_seeds{first}-{last}"


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
    pattern = re.compile(r"(?P<net>[a-z]+\d+)(_seeds?(?P<first>\d+)(-(?P<last>\d+))?)?")
    done: dict[str, set[int]] = {}
    for run in sorted(study.iterdir()) if study.is_dir() else []:
        match = pattern.fullmatch(run.name)
        if not match or not (run / "result.json").exists():
            continue
        first = int(match["first"] or 0)
        last = int(match["last"] or first)
        done.setdefault(match["net"], set()).update(range(first, last + 1))
    return done


def pending_programs(
    item: Study, done: dict[str, set[int]], shape: Shape, carried: Iterable[str] = ()
) -> list[Program]:
    """The programs that train what `item` still lacks: per net, its missing seeds in groups of `shape.members`
    (consecutive seeds, so that each group is one run folder). A carried (partial) run resumes as the same program."""
    carried_seeds = {}
    for run in carried:  # a partial run from an earlier lease keeps its seeds: its checkpoint holds those members
        if any(run.startswith(f"{net}_seed") for net in item.nets):
            carried_seeds[run] = _seeds_of(run)
    programs = []
    for net in item.nets:
        missing = [s for s in item.seeds if s not in done.get(net, set())]
        groups = [
            list(seeds)
            for run, seeds in carried_seeds.items()
            if run.startswith(f"{net}_seed") and set(seeds) <= set(missing)
        ]
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


def _seeds_of(run: str) -> tuple[int, ...]:
    match = re.search(r"_seeds?(\d+)(?:-(\d+))?$", run)
    first = int(match[1])
    return tuple(range(first, int(match[2] or first) + 1))


def step_seconds(net: str, members: int, fill: dict | None) -> float:
    """Seconds per step of a program of `members` seeds of `net` on this device kind: from its fill measurement
    (the figure of that many members in the chosen mode, or the nearest measured), else the H100's single-run prior;
    linear in depth between the measured nets."""
    depth = int(re.sub(r"\D", "", net))
    measured: dict[int, float] = {}
    for figure in (fill or {}).get("figures", []):
        if "error" in figure or figure.get("dtype", "float32") != "float32" or figure.get("xla_flags"):
            continue
        if figure["mode"] == "processes":
            continue
        runs = figure["members"]
        seconds_per_step = figure["seconds"] / (figure["images"] / (runs * 128))
        key = int(re.sub(r"\D", "", figure["net"]))
        if runs == members or (runs >= members and key not in measured):
            measured[key] = seconds_per_step
    if len(measured) < 2:
        measured = {d: s * members for d, s in PRIOR_STEP_S.items()}  # one run's steps, one after the other
    (d0, s0), (d1, s1) = sorted(measured.items())[:2]
    return max(s0 + (s1 - s0) * (depth - d0) / (d1 - d0), min(s0, s1) / 2)


def estimate_s(program: Program, steps_done: int, fill: dict | None, steps: int = PAPER_STEPS) -> float:
    """How long `program` takes from `steps_done` to the end: its steps, its compilation and first evaluation."""
    return COMPILE_S + (steps - steps_done) * step_seconds(program.net, len(program.seeds), fill)


def checkpoint_mb(net: str, members: int) -> float:
    """Size of a checkpoint of `members` seeds of `net`: parameters, momentum and BN statistics in float32."""
    depth = int(re.sub(r"\D", "", net))
    n = (depth - 2) // 6
    params = 16 * 27 + sum(2 * n * 9 * w * w for w in (16, 32, 64)) + 64 * 10  # conv kernels dominate
    return members * params * 4 * 2 / 2**20 + 0.1


def should_start(
    program: Program,
    steps_done: int,
    remaining_s: float,
    fill: dict | None,
    carry_left_mb: float,
    steps: int = PAPER_STEPS,
    min_start_s: float = MIN_START_S,
) -> bool:
    """Whether a program is worth starting with `remaining_s` left: it finishes in time, or its partial checkpoint
    fits what can be carried to the next lease; never with less than `min_start_s` left."""
    if remaining_s < min_start_s:
        return False
    if estimate_s(program, steps_done, fill, steps) <= remaining_s:
        return True
    return checkpoint_mb(program.net, len(program.seeds)) <= carry_left_mb


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
