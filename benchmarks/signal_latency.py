"""How soon after a ``mrisr`` process is created does it handle Ctrl-C and SIGTERM itself?

    python benchmarks/signal_latency.py --runs 20

Starts ``mrisr info`` ``--runs`` times and measures the time from creating the process to the
moment its SIGTERM handler is installed (the SIGTERM bit of ``SigCgt`` in ``/proc/PID/status``;
Python installs none of its own, so the bit is mrisr's, set together with its SIGINT handler on
import of ``mrisr.cli.main``). Before that instant the interpreter is starting and its defaults
apply (docs/reliability.md, "Signals"). Linux only. Prints the median and the maximum in ms.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path


# The fault-injection suite's reading of /proc/PID/status (SigCgt).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_faults import proc_catches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    command = shutil.which("mrisr", path=str(Path(sys.executable).parent)) or "mrisr"
    delays = []
    for _ in range(args.runs):
        start = time.perf_counter()
        proc = subprocess.Popen([command, "info"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while not proc_catches(proc.pid, signal.SIGTERM) and proc.poll() is None:
            time.sleep(0.0002)
        delays.append(time.perf_counter() - start)
        proc.wait()
    print(f"handlers installed {statistics.median(delays) * 1e3:.0f} ms (median), "
          f"{max(delays) * 1e3:.0f} ms (max) after the process is created ({args.runs} runs)")


if __name__ == "__main__":
    main()
