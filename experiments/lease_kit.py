"""The kit a GPU lease carries: the wheels the lease machine lacks, the data the next agenda items need, the runs
not finished by earlier leases. Built here, where PyPI can be reached; the lease machine cannot reach anything.

    python -m experiments.lease_kit            # writes .lease_kit/ and .lease_carry/, prints what travels

The lease machine (device tool, kind nvidia-h200) has Python 3.12, JAX 0.11, Flax, optax, orbax and chex, but not
grain, tensorflow-datasets, array_record, ml_collections, tensorboardX or simplejpeg, and it cannot see ../shared.
The kit holds, in `.lease_kit/` (ignored by git):
  wheels/   the wheels for CPython `--python` (3.12) on manylinux x86-64 of what it lacks, and of our Flax, optax,
            orbax and chex at the versions of constraints.txt (installed in front of the image's, so the lease runs
            the versions the tests ran), each from constraints.txt's pins;
  data/     the files of ../shared/data that the items a lease can reach need (the plan of `--timeout_s`; the
            CIFAR-10 tarball always), as long as everything that travels stays under `--limit_mb`;
  kit.json  the Python the wheels are for, which the lease's preflight checks first.
`.lease_carry/` holds what earlier leases sent back to be carried (from ~/.cache/resnet_jax/leases, where `--unpack`
keeps it): the runs a lease was cut short in, each with its newest checkpoint, and the compilation cache. It prints
the size of everything that travels (the repository's files too), the plan, and the device call.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from experiments import lease_plan as plan
from experiments.lease import RESERVE_S
from experiments.lease_files import REPO
from experiments.lease_unpack import CACHE

# What the lease image lacks (the device tool's KINDS.md lists what it has), and ours to run in front of its own.
MISSING = (
    "grain",
    "tensorflow-datasets",
    "array-record",
    "ml-collections",
    "tensorboardX",
    "simplejpeg",
    "dm-tree",
    "immutabledict",
    "promise",
    "simple-parsing",
    "docstring-parser",
    "tensorflow-metadata",
    "googleapis-common-protos",
    "termcolor",
    "toml",
    "importlib-resources",
    "portpicker",
)
OURS = ("flax", "optax", "orbax-checkpoint", "chex")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PYTHON = "3.12"  # the lease image's
MARGIN_S = 15  # between the device call's limit and the lease's --budget_s: the shell, the last transfer
COMMAND = (
    "export LEASE_T0=$(date +%s) PYTHONUNBUFFERED=1; python3 -m experiments.lease_preflight && "
    "python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .lease_kit/wheels/*.whl && "
    "PYTHONPATH=/tmp/site:$PWD python3 -m experiments.lease --budget_s={budget_s} --out=$OUT"
)


def pins() -> dict[str, str]:
    """{normalised name: version} of constraints.txt."""
    found = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            found[name.strip().lower().replace("_", "-")] = version.strip()
    return found


def download_wheels(folder: Path, python: str = PYTHON) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    versions = pins()
    for name in (*MISSING, *OURS):
        requirement = f"{name}=={versions[name.lower()]}" if name.lower() in versions else name
        argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        argv += ["--python-version", python, "--implementation", "cp", "-d", str(folder), requirement]
        for platform in PLATFORMS:
            argv += ["--platform", platform]
        if subprocess.run(argv, capture_output=True).returncode:  # no wheel published (promise): build a pure one
            before = set(folder.iterdir())
            build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), requirement]
            subprocess.run(build, check=True)
            for wheel in set(folder.iterdir()) - before:
                if not wheel.name.endswith("-py3-none-any.whl") and not wheel.name.endswith("-py2.py3-none-any.whl"):
                    wheel.unlink()
                    sys.exit(
                        f"{name}: no {python} wheel is published and the one built here is not pure Python "
                        f"({wheel.name}): the lease could not install it."
                    )


def needed_data(results: Path, kind: str = "nvidia_h200", budget_s: float = 525.0) -> list[tuple[str, ...]]:
    """What the items a lease of `budget_s` on `kind` can reach need of ../shared/data, item by item in agenda order
    (the CIFAR-10 tarball, which every training needs, first); an item's files travel all together or not at all."""
    from experiments.lease import plan_inputs

    wanted = [("cifar10/cifar-10-images-jpg.tar.gz",)]
    rows = plan.simulate(*plan_inputs(kind, results), budget_s - RESERVE_S)
    reached = {row["item"] for row in rows if "start_s" in row}
    for item in plan.AGENDA:
        if item.name not in reached:
            continue
        needs = tuple(need for need in getattr(item, "needs", ()) if (need,) not in wanted)
        if needs and needs not in wanted:
            wanted.append(needs)
    return wanted


def copy_imagenet_samples(source: Path, target: Path, room_mb: float, least: int = 64) -> float:
    """The first of the 1000 ImageNet sample images that fit into `room_mb`, with their labels.tsv rows (none if
    fewer than `least` fit); returns the MiB copied."""
    header, *rows = (source / "labels.tsv").read_text().splitlines()
    kept, used = [], 0.0
    for row in rows:
        image = source / "images" / row.split("\t")[2]
        if used + size_mb(image) > room_mb:
            break
        kept.append(row)
        used += size_mb(image)
    if len(kept) < least:
        print(f"left out (the limit): imagenet_samples ({len(kept)} images would fit)")
        return 0.0
    (target / "images").mkdir(parents=True, exist_ok=True)
    for row in kept:
        shutil.copy2(source / "images" / row.split("\t")[2], target / "images")
    (target / "labels.tsv").write_text("\n".join([header, *kept]) + "\n")
    print(f"imagenet_samples: {len(kept)} of {len(rows)} images")
    return used


def size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def tracked_mb() -> float:
    """The repository's files that travel with every device call."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--kit", default=str(REPO / ".lease_kit"))
    parser.add_argument("--carry", default=str(REPO / ".lease_carry"))
    parser.add_argument("--limit_mb", type=float, default=60.0)
    parser.add_argument("--no_wheels", action="store_true", help="keep the wheels already in the kit")
    parser.add_argument("--python", default=PYTHON, help="the lease machine's Python (major.minor)")
    parser.add_argument("--kind", default="nvidia_h200", help="the lease's device kind (for the plan)")
    parser.add_argument("--timeout_s", type=int, default=540, help="the device call's limit you will give")
    args = parser.parse_args()
    kit, carry, shared = Path(args.kit), Path(args.carry), Path(args.shared)
    budget_s = args.timeout_s - MARGIN_S
    if not args.no_wheels:
        shutil.rmtree(kit / "wheels", ignore_errors=True)
        download_wheels(kit / "wheels", args.python)
    kit.mkdir(parents=True, exist_ok=True)
    (kit / "kit.json").write_text(json.dumps({"python": args.python}))
    shutil.rmtree(carry, ignore_errors=True)
    carry.mkdir(parents=True)
    for run in sorted(CACHE.iterdir()) if CACHE.is_dir() else []:
        shutil.copytree(run, carry / run.name)  # unpack keeps a run's newest checkpoint only
    shutil.rmtree(kit / "data", ignore_errors=True)
    used = tracked_mb() + size_mb(kit / "wheels") + size_mb(carry)
    for needs in needed_data(REPO / "results", args.kind, budget_s):
        if needs == ("imagenet_samples",):  # 110 MB: as many of its images as fit (a throughput test repeats them)
            used += copy_imagenet_samples(shared / needs[0], kit / "data" / needs[0], min(16.0, args.limit_mb - used))
            continue
        if used + sum(size_mb(shared / need) for need in needs) > args.limit_mb:
            print(f"left out (the limit): {', '.join(needs)}")
            continue
        for need in needs:
            source, target = shared / need, kit / "data" / need
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
            used += size_mb(source)
    for name, path in (("repository", None), ("wheels", kit / "wheels"), ("data", kit / "data"), ("carry", carry)):
        print(f"{name:>10}: {tracked_mb() if path is None else size_mb(path):6.1f} MiB")
    print(f"{'travels':>10}: {used:6.1f} MiB (limit {args.limit_mb:.0f})")
    from experiments.lease import plan_only

    plan_only(args.kind, budget_s, REPO / "results")
    print(
        f'device call (run: timeout_s={args.timeout_s}, carry=[".lease_kit", ".lease_carry"]):\n  '
        + COMMAND.format(budget_s=budget_s)
    )
    if used > args.limit_mb:
        sys.exit(f"what travels is {used:.1f} MiB, over {args.limit_mb:.0f}")


if __name__ == "__main__":
    main()
