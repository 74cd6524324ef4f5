"""How long the documented quick starts take: ``run.py`` on each toy world, 10 epochs, from a fresh process.

    HF_HUB_OFFLINE=1 python benchmarks/quick_start.py --json docs/quick_start.json

Each world's command (the README's for ``toy-digits``, ``docs/toy_world.md``'s for ``toy-digits-attn``) runs
``--repeats`` times as a child process into a fresh result folder, so imports, model loading, the search and the
result files are all counted, as a user meets them. Reported per world: the median wall time, the median CPU time of
the child (user + system, all threads) and the load average read before each run, with the machine read at run time.
``--threads`` sets ``OMP_NUM_THREADS`` for the children (default: left as it is, so torch picks its own).
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import ROOT, machine, publish

#: world -> (verifier, prompt) of its documented quick start
QUICK_STARTS = {"toy-digits": ("toy-digits-cnn", "a 3 left of a 7"),
                "toy-digits-attn": ("toy-digits-attn-cnn", "a 2 and a 3")}
TARGET_SECONDS = 15.0


def quick_start_command(world: str, result_root: str) -> list[str]:
    verifier, prompt = QUICK_STARTS[world]
    return [sys.executable, str(ROOT / "run.py"), "--prompt", prompt, "--sd_version", world, "--vqa_model", verifier,
            "--max_epoch", "10", "--device", "cpu", "--result_root", result_root]


def time_once(world: str, env: dict) -> dict:
    """One quick start in a fresh result folder: wall and child CPU seconds, the load average before it."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as root:
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        done = subprocess.run(quick_start_command(world, root), env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: the {world} quick start failed ({done.returncode}): {tail}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall_seconds": wall, "cpu_seconds": cpu, "load_before": load}


def measure(worlds: list[str], repeats: int, threads: int | None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "omp_num_threads": env.get("OMP_NUM_THREADS", "unset"), "target_seconds": TARGET_SECONDS, "worlds": {}}
    for world in worlds:
        runs = [time_once(world, env) for _ in range(repeats)]
        report["worlds"][world] = {
            "command": shlex.join(["python", "run.py", *quick_start_command(world, "results")[2:]]),
            "runs": runs, **{f"median_{k}": statistics.median(r[k] for r in runs) for k in runs[0]}}
    return report


def render(report: dict) -> str:
    lines = [f"Quick starts, {report['date']}: {report['machine']}; OMP_NUM_THREADS {report['omp_num_threads']} in "
             f"the runs; medians over {len(next(iter(report['worlds'].values()))['runs'])} fresh processes.", "",
             "| world | wall s | CPU s (user + system) | load average before | under the target |", "|---|---|---|---|---|"]
    for world, row in report["worlds"].items():
        under = "yes" if row["median_wall_seconds"] < report["target_seconds"] else "no"
        lines.append(f"| `{world}` | {row['median_wall_seconds']:.1f} | {row['median_cpu_seconds']:.1f} | "
                     f"{row['median_load_before']:.2f} | {under} ({report['target_seconds']:.0f} s) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", choices=sorted(QUICK_STARTS), default=list(QUICK_STARTS),
                        help="toy worlds to time (default: both)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per world (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the runs (default: unchanged, torch's own choice)")
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats and --threads must be >= 1")
    report = measure(args.worlds, args.repeats, args.threads)
    return publish(report, render(report), args.json)


if __name__ == "__main__":
    sys.exit(main())
