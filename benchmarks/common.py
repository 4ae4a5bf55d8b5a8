"""Shared helpers of the benchmark scripts: machine description, table printing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """Describe the machine a benchmark ran on."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print benchmark rows (case, unit, ours, reference, ratio, target) as an aligned table."""
    columns = ["case", "unit", "ours", "reference", "ratio", "target"]
    cells = [[_format(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process.

    On Linux this is ``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` survives
    ``fork`` + ``exec`` and would report the (larger) parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    # macOS reports bytes, other systems kilobytes
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run_job_or_main(
    jobs: dict[str, Callable[..., dict[str, Any]]], main: Callable[[], None]
) -> None:
    """Run ``python script.py JOB JSON_KWARGS`` (one measured job, printing ``RESULT {...}``) or ``main``.

    The drivers start every measured job in a fresh process this way, so each
    runs alone with one thread; warnings are silenced so that the last line is
    the result.
    """
    if len(sys.argv) == 3 and sys.argv[1] in jobs:
        import warnings

        warnings.filterwarnings("ignore")
        result = jobs[sys.argv[1]](**json.loads(sys.argv[2]))
        print("RESULT " + json.dumps(result, default=float))
    else:
        main()
