"""The depth study's run folders, named by their net and seeds: the one place that writes and reads the name.

    <net>_seed<s>          one seed
    <net>_seeds<a>-<b>     seeds a..b, trained together in one program (`config.runs`)
    <net>                  the older layout: one run, seed 0

The study, the lease that runs it on a device and Figure 7 ask here. Nothing here imports JAX: the lease's parent
process reads names before any program starts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NAME = re.compile(r"(?P<net>[a-z]+\d+)(?:_seeds?(?P<first>\d+)(?:-(?P<last>\d+))?)?")


def run_name(net: str, seeds: Sequence[int]) -> str:
    """The folder of the run of `net` with these (consecutive) seeds."""
    first, last = seeds[0], seeds[-1]
    return f"{net}_seed{first}" if len(seeds) == 1 else f"{net}_seeds{first}-{last}"


def parse_run_name(name: str) -> tuple[str, tuple[int, ...]] | None:
    """(net, seeds) of a run folder's name; None for a name that is not one."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    first = int(match["first"] or 0)
    return match["net"], tuple(range(first, int(match["last"] or first) + 1))
