"""The paper's ablation on the toy world: one ``evaluate.py --methods ...`` call over a fixed prompt sample, then
every method against Noise Diffusion with paired bootstrap intervals over prompts.

The sample is drawn before anything runs: ``--prompts`` prompts of ``toy-complex`` (half of them held-out
combinations, digit pairs never drawn together in the generator's training canvases), chosen without replacement by
a seeded generator (``--sample_seed``) and written to ``<result_root>/ablation_prompts.json`` (categories ``seen`` and
``held_out``), which is the dataset of the call. Guided by ``toy-digits-cnn``; every saved image is judged by
``toy-digits-heldout-resnet``, which the search never sees.

Each comparison pairs a method's run with Noise Diffusion's run of the same prompt and seed; the difference
(method − Noise Diffusion) is averaged over the seeds of a prompt and the 95 % interval is a percentile bootstrap over
prompts (:func:`noise_diffusion.intervals.compare`). ``--report_only`` recomputes them from a finished result root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clean clone without installing
    sys.path.insert(0, str(ROOT))

from noise_diffusion.ablation import best_at, prior_at  # noqa: E402
from noise_diffusion.atomic import write_json_atomic  # noqa: E402
from noise_diffusion.datasets import resolve  # noqa: E402
from noise_diffusion.errors import UserError  # noqa: E402
from noise_diffusion.intervals import compare  # noqa: E402
from noise_diffusion.prior_stats import KS, NORM_GAP  # noqa: E402
from noise_diffusion.report import collect  # noqa: E402

METHODS = ("gradient_ascent", "mean_variance", "best_of_n", "random_diffusion", "noise_diffusion")
REFERENCE = "noise_diffusion"
GUIDE, JUDGE = "toy-digits-cnn", "toy-digits-heldout-resnet"
PROMPT_FILE, RESULT_FILE = "ablation_prompts.json", "ablation_toy.json"
#: what is compared, per run: name -> value (None where the run does not hold it)
MEASURES = {
    "guide best-so-far @1": lambda run: best_at(run.record, 1),
    "guide best-so-far @5": lambda run: best_at(run.record, 5),
    "guide best (last)": lambda run: run.record.best_score,
    f"held-out best ({JUDGE})": lambda run: run.held_out[JUDGE].best_score if JUDGE in run.held_out else None,
    "‖z‖²/D − 1 gap at best": lambda run: prior_at(run.record, run.record.best_epoch, NORM_GAP),
    "KS vs N(0, 1) at best": lambda run: prior_at(run.record, run.record.best_epoch, KS),
}


def choose_prompts(count: int, seed: int) -> dict[str, list[dict]]:
    """``count`` prompts of ``toy-complex``, half seen and half held-out combinations, drawn without replacement."""
    entries = json.loads(resolve("toy-complex").read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    sample = {}
    for name, held, size in (("seen", False, count - count // 2), ("held_out", True, count // 2)):
        pool = [e for e in entries if bool(e.get("held_out")) == held]
        if size > len(pool):
            raise UserError(f"toy-complex has {len(pool)} {name} prompts, fewer than the {size} asked for")
        picks = sorted(rng.choice(len(pool), size=size, replace=False).tolist())
        sample[name] = [{"prompt": pool[k]["prompt"], "indices": pool[k]["indices"]} for k in picks]
    return sample


def evaluate_command(args: argparse.Namespace, dataset: Path) -> list[str]:
    """The one evaluate.py call of the ablation."""
    return [sys.executable, str(ROOT / "evaluate.py"), "--dataset", str(dataset), "--seeds", *map(str, args.seeds),
            "--methods", *args.methods, "--sd_version", "toy-digits", "--vqa_model", GUIDE, "--eval_vqa_model", JUDGE,
            "--device", "cpu", "--max_epoch", str(args.max_epoch), "--batch_size", str(args.batch_size), "--quiet",
            "--result_root", str(args.result_root)]


def machine_facts() -> dict:
    """What the run was made on, read now."""
    import torch

    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
            "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor() or "unknown",
            "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def run_ablation(args: argparse.Namespace) -> dict:
    """Write the prompt sample, run the evaluate.py call, and say what it took."""
    root = Path(args.result_root)
    root.mkdir(parents=True, exist_ok=True)
    dataset = root / PROMPT_FILE
    write_json_atomic(dataset, choose_prompts(args.prompts, args.sample_seed))
    command = evaluate_command(args, dataset)
    facts = machine_facts()
    started, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    facts["wall_seconds"] = round(time.perf_counter() - started, 1)
    facts["cpu_seconds"] = round(cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, 1)
    facts["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    facts["command"] = " ".join(["python", os.path.relpath(command[1], Path.cwd()), *command[2:]])
    return facts


def paired_intervals(root: Path, resamples: int) -> list[dict]:
    """Every method against Noise Diffusion on every measure, paired by (prompt, seed), over prompts."""
    runs = {(r.method, r.record.prompt, r.record.seed): r for r in collect(root)}
    methods = list(dict.fromkeys(m for m, _, _ in runs))
    if REFERENCE not in methods:
        raise UserError(f"no {REFERENCE} runs under {root}: nothing to compare against")
    out = []
    for method in [m for m in methods if m != REFERENCE]:
        for measure, value in MEASURES.items():
            pairs = [(value(run), value(runs[REFERENCE, p, s]), p) for (m, p, s), run in sorted(runs.items())
                     if m == method and (REFERENCE, p, s) in runs]
            pairs = [(a, b, p) for a, b, p in pairs if a is not None and b is not None]
            if not pairs:
                continue
            a, b, prompts = zip(*pairs)
            result = compare(a, b, prompts, resamples=resamples).as_dict()
            out.append({"method": method, "measure": measure, "items": len(pairs), **result})
    return out


def markdown(root: Path, intervals: list[dict]) -> str:
    """The ablation rows of ``summary.md`` and the intervals as one markdown table."""
    summary = (root / "summary.md").read_text(encoding="utf-8")
    table = summary.split("## Ablation: convergence and image quality\n\n", 1)[1].split("\n\n", 1)[0]
    lines = [table, "", f"Method − {REFERENCE}, paired by (prompt, seed), seeds averaged per prompt, 95 % bootstrap "
             "interval over prompts:", "", "| method | measure | items | prompts | mean [95 % CI] | prompts + / − "
             "| sign test p |", "|---|---|---|---|---|---|---|"]
    for c in intervals:
        lines.append(f"| {c['method']} | {c['measure']} | {c['items']} | {c['prompts']} | {c['mean']:+.3f} "
                     f"[{c['low']:+.3f}, {c['high']:+.3f}] | {c['positive']} / {c['negative']} | {c['sign_p']:.2g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=10, help="prompts in the sample (default: %(default)s)")
    parser.add_argument("--sample_seed", type=int, default=0, help="seed of the prompt draw (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of every prompt (default: 0 1)")
    parser.add_argument("--max_epoch", type=int, default=10, help="epochs after the initial one (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="methods to run (default: the five rows)")
    parser.add_argument("--batch_size", type=int, default=20, help="items at once (default: %(default)s)")
    parser.add_argument("--result_root", default="results/ablation_toy", help="output folder (default: %(default)s)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--report_only", action="store_true", help="only the intervals, from a finished result root")
    args = parser.parse_args(argv)
    root = Path(args.result_root)
    facts = {} if args.report_only else run_ablation(args)
    intervals = paired_intervals(root, args.resamples)
    result = {"facts": facts, "intervals": intervals}
    if not args.report_only:
        write_json_atomic(root / RESULT_FILE, result)
    print(json.dumps(facts, indent=1) if facts else "", markdown(root, intervals), sep="\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
