"""Wall time and peak memory of one child process.

Linux reports a child's peak RSS (``wait4``'s ``ru_maxrss``) as at least the parent's
peak RSS at the moment it forked (exec keeps the high-water mark of the memory it
replaces), so benchmarks start their measured processes from a parent that has done
nothing heavy yet: work such as computing a model's floor runs after them, or in a child.
:func:`measure` refuses a figure that could be the parent's.
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run ``cmd`` (in ``env``, default: this environment); return its wall seconds, its own
    peak RSS in MiB and its stdout."""
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed: {stderr.strip()[-2000:]}")
    peak = usage.ru_maxrss / 1024
    if peak <= parent * 1.05:
        raise SystemExit(f"peak RSS of {cmd[0]} not measurable: this process ({parent:.0f} MiB) is as large")
    return wall, peak, stdout
