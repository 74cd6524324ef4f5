"""The paper's main table in miniature, on the attention toy world ``toy-digits-attn`` (plan fixed beforehand in
``docs/replication_toy_attn.md``).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/main_table_toy.py

Runs the plain sampler, Attend-and-Excite, InitNO, InitNO's noise alone, best-of-N (up to 11 and 51 generations) and
Noise Diffusion (10 and 50 epochs) through ``noise_diffusion.optimize`` on 40 spatial and 40 existence prompts x the
paper's five seeds, judges every kept image with the held-out verifiers, and writes the results section of
``docs/replication_toy_attn.md`` (below its plan, which it keeps) and ``docs/replication_toy_attn.json``. Each
method's raw scores are cached per seed in ``--raw`` (written whole or not at all), so an interrupted run resumes and a
finished method is never run twice; each method runs one seed at a time (a shard), ``--workers`` shards at once,
one thread each. ``--render_only`` renders the seeds finished so far, marked as interim.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from noise_diffusion import SearchConfig, load_generator, load_verifier, optimize  # noqa: E402
from noise_diffusion.cli import PAPER_SEEDS  # noqa: E402
from noise_diffusion.intervals import compare, mean_interval  # noqa: E402
from noise_diffusion.toy import world, world_attn  # noqa: E402
from replicate_toy_report import fmt_ci, fmt_mean, write_between_markers  # noqa: E402

WORLD = "toy-digits-attn"
GUIDE = "toy-digits-attn-cnn"
JUDGES = ("toy-digits-attn-heldout-resnet", "toy-digits-attn-heldout")  # primary first
PROMPT_SEED = 2026
TARGET = 0.9  # the searches stop an item once the guide's score reaches this (both searches alike)
#: key -> (row label, SearchConfig settings); in the order of the table
METHODS = {
    "plain": ("plain sampler", dict(method="none")),
    "attend_and_excite": ("Attend-and-Excite", dict(method="attend_and_excite")),
    "initno": ("InitNO", dict(method="initno")),
    "initno_noise_only": ("InitNO, noise only", dict(method="initno_noise_only")),
    "best_of_n_10": ("best-of-N, up to 11", dict(method="best_of_n", max_epoch=10, target_score=TARGET)),
    "best_of_n_50": ("best-of-N, up to 51", dict(method="best_of_n", max_epoch=50, target_score=TARGET)),
    "noise_diffusion_10": ("Noise Diffusion, 10 epochs",
                           dict(method="noise_diffusion", max_epoch=10, num_candidates=50, target_score=TARGET)),
    "noise_diffusion_50": ("Noise Diffusion, 50 epochs",
                           dict(method="noise_diffusion", max_epoch=50, num_candidates=50, target_score=TARGET)),
}
#: the pre-registered comparisons (a, b): a - b
PAIRS = [("attend_and_excite", "plain"), ("initno", "plain"), ("initno_noise_only", "plain"),
         ("best_of_n_10", "plain"), ("noise_diffusion_10", "plain"), ("noise_diffusion_50", "plain"),
         ("initno", "initno_noise_only"), ("noise_diffusion_10", "best_of_n_10"),
         ("noise_diffusion_50", "best_of_n_50"), ("noise_diffusion_10", "initno"),
         ("noise_diffusion_10", "attend_and_excite"), ("noise_diffusion_50", "noise_diffusion_10")]
MARKER = "<!-- results below are written by benchmarks/main_table_toy.py -->"
#: the summary this script keeps in the replication report, between these lines
SUMMARY_BEGIN, SUMMARY_END = "<!-- main-table-toy:begin -->", "<!-- main-table-toy:end -->"
SUMMARY_PAIRS = [("noise_diffusion_10", "best_of_n_10"), ("noise_diffusion_50", "best_of_n_50"),
                 ("initno", "initno_noise_only")]


def table_prompts(seed: int = PROMPT_SEED) -> list[dict]:
    """40 spatial prompts (10 per relation, 5 of them held-out combinations) and 40 existence prompts (the 20 held-out
    ones and 20 of the 70 seen ones)."""
    rng = np.random.default_rng(seed)
    pairs = [(a, b) for a in range(10) for b in range(10) if a != b]
    held = [p for p in pairs if world_attn.is_held_out_config("H", *p)]
    seen = [p for p in pairs if not world_attn.is_held_out_config("H", *p)]
    entries = []
    for relation in world.RELATIONS[:4]:
        for pool in (held, seen):
            for i in rng.choice(len(pool), 5, replace=False):
                entries.append(world.make_prompt(pool[i][0], relation, pool[i][1]))
    entries += [world.make_prompt(a, "and", b) for a, b in held]
    entries += [world.make_prompt(seen[i][0], "and", seen[i][1]) for i in rng.choice(len(seen), 20, replace=False)]
    return [{"prompt": p, "family": "existence" if " and " in p else "spatial",
             "held_out": world_attn.is_held_out_prompt(p)} for p in entries]


def found_digits(probabilities: torch.Tensor, a: int, b: int) -> int:
    """How many of the two digits the judge finds: a digit is found when some box's most likely class is it."""
    classes = set(probabilities.argmax(-1).tolist())
    return int(a in classes) + int(b in classes)


def judge_images(images: torch.Tensor, prompts: list[str]) -> dict:
    out = {}
    for name in JUDGES:
        judge = load_verifier(name)
        with torch.no_grad():
            out[f"{name}:score"] = judge(images, prompts).tolist()
            out[f"{name}:faithful"] = [bool(v) for v in judge.is_faithful(images, prompts)]
            probs = judge.box_probabilities(images)
        parsed = [world.parse_prompt(p) for p in prompts]
        out[f"{name}:found"] = [found_digits(probs[i], q.a, q.b) for i, q in enumerate(parsed)]
    return out


def selected_prompts(limit: int | None) -> list[dict]:
    """The table's prompts, or the first ``limit`` of each family (to check the script, not for the table)."""
    entries = table_prompts()
    if not limit:
        return entries
    return [e for f in ("spatial", "existence") for e in [x for x in entries if x["family"] == f][:limit]]


def run_shard(key: str, seed: int, raw: str, limit: int | None, model: str) -> str:
    """Run one method on every prompt with one seed; cache the raw scores in ``raw/<key>-<seed>.json`` (written whole
    or not at all; skipped when there)."""
    torch.set_num_threads(1)
    path = Path(raw) / f"{key}-{seed}.json"
    if path.exists():
        return key
    prompts = [e["prompt"] for e in selected_prompts(limit)]
    seeds = [seed] * len(prompts)
    generator = load_generator(model)
    guide = load_verifier(GUIDE)
    cpu, wall = time.process_time(), time.perf_counter()
    results = optimize(generator, guide, prompts, seeds, SearchConfig(**METHODS[key][1]), progress=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    images = torch.stack([r.best_image for r in results]).float()
    record = {"key": key, "cpu_seconds": cpu, "wall_seconds": wall, "prompts": prompts, "seeds": seeds,
              "guide": [float(r.best_score) for r in results], "initial_guide": [float(r.initial_score) for r in results],
              "compute": [dict(r.compute) for r in results], **judge_images(images, prompts)}
    temporary = path.with_suffix(".partial")
    temporary.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    print(time.strftime("%H:%M:%S"), f"{key} seed {seed}: {cpu / 60:.1f} CPU-min, {wall / 60:.1f} min wall", flush=True)
    return key


def load_records(raw: str, seeds: list[int]) -> tuple[dict, list[int]]:
    """Each method's shards joined, for the seeds that every method has finished (in the order of ``seeds``)."""
    done = [s for s in seeds if all((Path(raw) / f"{k}-{s}.json").exists() for k in METHODS)]
    records = {}
    for key in METHODS:
        shards = [json.loads((Path(raw) / f"{key}-{s}.json").read_text()) for s in done]
        joined = {"cpu_seconds": sum(r["cpu_seconds"] for r in shards)}
        for field in shards[0] if shards else []:
            if isinstance(shards[0][field], list):
                joined[field] = [v for r in shards for v in r[field]]
        records[key] = joined
    return records, done


def verdict(c) -> str:
    if c.significant and c.sign_p < 0.05:
        return "supported: " + ("a > b" if c.mean > 0 else "a < b")
    if c.significant:
        return f"interval excludes 0, sign test does not (p = {c.sign_p:.2g})"
    return "not significant"


def family_rows(records: dict, family: str, entries: list[dict]) -> tuple[list[str], dict]:
    """Markdown rows of one family's main table and its numbers."""
    judge = JUDGES[0]
    kind = {e["prompt"]: e for e in entries}
    first = records["plain"]
    keep = [i for i, p in enumerate(first["prompts"]) if kind[p]["family"] == family]
    groups = [first["prompts"][i] for i in keep]
    rows, numbers = [], {}
    for key, (label, _) in METHODS.items():
        r = records[key]
        score = [r[f"{judge}:score"][i] for i in keep]
        mean, low, high = mean_interval(score, groups)
        neglect = [float(r[f"{judge}:found"][i] == 1) for i in keep]
        compute = [r["compute"][i] for i in keep]
        gens = np.mean([c.get("generations", 1) for c in compute])
        fwd, bwd = np.mean([c.get("model_evals", 0) for c in compute]), np.mean([c.get("model_backwards", 0) for c in compute])
        cpu_item = r["cpu_seconds"] / len(r["prompts"])
        accuracy = np.mean([r[f"{judge}:faithful"][i] for i in keep])
        mlp = np.mean([r[f"{JUDGES[1]}:score"][i] for i in keep])
        held_out = [s for s, i in zip(score, keep) if kind[first["prompts"][i]]["held_out"]]
        seen = [s for s, i in zip(score, keep) if not kind[first["prompts"][i]]["held_out"]]
        held, seen_ = (float(np.mean(v)) if v else float("nan") for v in (held_out, seen))
        versus = "–"
        if key != "plain":
            c = compare(score, [records["plain"][f"{judge}:score"][i] for i in keep], groups)
            versus = f"{fmt_ci(c.as_dict())}, p = {c.sign_p:.2g}"
        neglect_text = f"{100 * np.mean(neglect):.1f} %" if family == "existence" else "–"
        rows.append(f"| {label} | {gens:.1f} | {fwd:.0f} / {bwd:.0f} | {cpu_item:.2f} | {np.mean([r['guide'][i] for i in keep]):.3f} "
                    f"| {fmt_mean((mean, low, high))} | {100 * accuracy:.1f} % | {mlp:.3f} | {seen_:.3f} / {held:.3f} "
                    f"| {neglect_text} | {versus} |")
        numbers[key] = {"generations": gens, "unet_forwards": fwd, "unet_backwards": bwd, "cpu_s_per_item": cpu_item,
                        "heldout": [mean, low, high], "accuracy": accuracy, "mlp": mlp, "neglect": float(np.mean(neglect)),
                        "seen": seen_, "held_out": held}
    return rows, numbers


def pair_rows(records: dict, family: str, entries: list[dict]) -> tuple[list[str], dict]:
    judge = JUDGES[0]
    kind = {e["prompt"]: e for e in entries}
    prompts = records["plain"]["prompts"]
    keep = [i for i, p in enumerate(prompts) if kind[p]["family"] == family]
    groups = [prompts[i] for i in keep]
    rows, numbers = [], {}
    for a, b in PAIRS:
        c = compare([records[a][f"{judge}:score"][i] for i in keep], [records[b][f"{judge}:score"][i] for i in keep], groups)
        m = compare([records[a][f"{JUDGES[1]}:score"][i] for i in keep], [records[b][f"{JUDGES[1]}:score"][i] for i in keep], groups)
        text = f"{fmt_ci(c.as_dict())} | {c.positive} / {c.negative} | {c.sign_p:.2g}"
        extra = ""
        if family == "existence":
            n = compare([float(records[a][f"{judge}:found"][i] == 1) for i in keep],
                        [float(records[b][f"{judge}:found"][i] == 1) for i in keep], groups)
            extra = f" {100 * n.mean:+.1f} [{100 * n.low:+.1f}, {100 * n.high:+.1f}] pts, p = {n.sign_p:.2g} |"
            numbers[f"{a} - {b}:neglect"] = n.as_dict()
        rows.append(f"| {METHODS[a][0]} | {METHODS[b][0]} | {text} | {fmt_ci(m.as_dict())} |"
                    f"{extra} {verdict(c)} |")
        numbers[f"{a} - {b}"] = {**c.as_dict(), "verdict": verdict(c)}
    return rows, numbers


def render(records: dict, seconds: dict, limit: int | None, done: list[int], seeds: list[int]) -> tuple[str, dict]:
    entries = selected_prompts(limit)
    cpu = sum(r["cpu_seconds"] for r in records.values()) / 60
    status = [] if done == seeds else [
        f"**Interim: seeds {', '.join(map(str, done))} of {', '.join(map(str, seeds))} finished for every method.** "
        "The same command finishes the rest (finished seeds are cached) and rewrites this section.", ""]
    lines = [MARKER, "", "## Results", "", *status,
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, CPU, one thread per "
             f"method, {seconds['workers']} methods at once; {cpu:.1f} CPU-min over all methods, {seconds['wall'] / 60:.1f} "
             f"min wall for this invocation (0 when every method was cached). Primary judge `{JUDGES[0]}`; `{JUDGES[1]}` "
             f"(MLP) beside it. CPU s / item: the method's process CPU time over its {len(records['plain']['prompts'])} "
             "items (the searches batch all items, the attention baselines run one item at a time)."]
    report = {"settings": {"world": WORLD, "guide": GUIDE, "judges": JUDGES, "seeds": done, "target": TARGET,
                           "prompt_seed": PROMPT_SEED, "prompts": entries}, "families": {}}
    for family in ("existence", "spatial"):
        rows, numbers = family_rows(records, family, entries)
        prs, pair_numbers = pair_rows(records, family, entries)
        neglect_head = " neglect Δ (ResNet) |" if family == "existence" else ""
        neglect_rule = "---|" if family == "existence" else ""
        count = sum(e["family"] == family for e in entries)
        lines += ["", f"### {family.capitalize()} prompts ({count} prompts x {len(done)} seeds)", "",
                  "| method | generations | UNet forwards / backwards per item | CPU s / item | guide | held-out (ResNet) [95 % CI] "
                  "| accuracy (ResNet) | held-out (MLP) | ResNet: seen / held-out comb. | neglect | − plain sampler [95 % CI], sign p |",
                  "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
                  "| a | b | a − b (ResNet) [95 % CI] | prompts a > b / a < b | sign p | a − b (MLP) |" + neglect_head + " verdict |",
                  "|---|---|---|---|---|---|" + neglect_rule + "---|", *prs]
        report["families"][family] = {"methods": numbers, "pairs": pair_numbers}
    return "\n".join(lines) + "\n", report


def summary_section(report: dict, full_table: str) -> str:
    """The replication report's short version of the table: each method's held-out score and its difference from the
    plain sampler per family, and the comparisons of the searches, with verdicts."""
    families = report["families"]
    seeds = ", ".join(map(str, report["settings"]["seeds"]))

    def versus(family: str, a: str, b: str = "plain") -> str:
        c = families[family]["pairs"].get(f"{a} - {b}")
        return "–" if c is None else f"{fmt_ci(c)}: {c['verdict']}"

    lines = [SUMMARY_BEGIN, "## The main table on the attention world", "",
             f"`benchmarks/main_table_toy.py` on `toy-digits-attn`, seeds {seeds}, with the plan fixed before the run "
             f"and the full table in [{full_table}]({full_table}). Held-out judge `{JUDGES[0]}`, mean over prompts "
             "[95 % CI]; differences paired by prompt (bootstrap and sign test; supported = both agree; in a verdict, a is the "
             "row's method and b the plain sampler). Only the pre-registered comparisons are given.", "",
             "| method | existence | − plain sampler | neglect (existence) | spatial | − plain sampler | CPU s / item |",
             "|---|---|---|---|---|---|---|"]
    for key, (label, _) in METHODS.items():
        e, sp = families["existence"]["methods"][key], families["spatial"]["methods"][key]
        lines.append(f"| {label} | {fmt_mean(e['heldout'])} | {versus('existence', key)} | "
                     f"{100 * e['neglect']:.1f} % | {fmt_mean(sp['heldout'])} | {versus('spatial', key)} | "
                     f"{e['cpu_s_per_item']:.2f} |")
    lines += ["", "| a | b | existence: a − b | spatial: a − b |", "|---|---|---|---|"]
    lines += [f"| {METHODS[a][0]} | {METHODS[b][0]} | {versus('existence', a, b)} | {versus('spatial', a, b)} |"
              for a, b in SUMMARY_PAIRS]
    return "\n".join(lines + ["", SUMMARY_END, ""])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default="results/main_table_toy", help="folder of the per-method raw scores")
    parser.add_argument("--workers", type=int, default=2, help="methods run at once, one thread each (default: 2)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first LIMIT prompts of each family: to check the script (not the table)")
    parser.add_argument("--sd_version", default=WORLD, help="generator (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(PAPER_SEEDS),
                        help="seeds (default: the paper's five); others only to check the script")
    parser.add_argument("--render_only", action="store_true",
                        help="run nothing: render the seeds that every method has finished")
    parser.add_argument("--out", default=str(ROOT / "docs" / "replication_toy_attn.md"),
                        help="markdown file whose part below the results marker is rewritten; JSON beside it")
    parser.add_argument("--summary", default=str(ROOT / "docs" / "replication_toy.md"),
                        help="report whose main-table summary (between its markers) is rewritten, when the run is "
                             "complete; 'none' for no summary")
    args = parser.parse_args(argv)
    if args.workers < 1:
        sys.exit("error: --workers must be >= 1")
    out = Path(args.out)
    head = out.read_text(encoding="utf-8").split(MARKER)[0] if out.exists() else ""
    Path(args.raw).mkdir(parents=True, exist_ok=True)
    order = ["plain", "noise_diffusion_50", "best_of_n_50", "noise_diffusion_10", "best_of_n_10", "attend_and_excite",
             "initno", "initno_noise_only"]
    wall = time.perf_counter()
    if not args.render_only:
        jobs = [(key, seed, args.raw, args.limit, args.sd_version) for seed in args.seeds for key in order]
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            pool.starmap(run_shard, jobs, chunksize=1)
    records, done = load_records(args.raw, args.seeds)
    if not done:
        sys.exit("error: no seed is finished for every method yet")
    text, report = render(records, {"wall": time.perf_counter() - wall, "workers": args.workers}, args.limit, done,
                          args.seeds)
    out.write_text(head + text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=float) + "\n", encoding="utf-8")
    if args.summary != "none" and done == args.seeds and not args.limit:
        summary = Path(args.summary)
        write_between_markers(summary, summary_section(report, os.path.relpath(out, summary.parent)), SUMMARY_BEGIN,
                              SUMMARY_END)
    print(text)


if __name__ == "__main__":
    main()
