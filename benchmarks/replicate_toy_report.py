"""The markdown and figures of a toy replication's report (``benchmarks/replicate_toy.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from noise_diffusion.intervals import mean_interval
from replicate_toy_runs import ATTENTION, JUDGE, LABELS, SEARCHES, SHORT, Row, at_generations, best_index


def fmt_ci(result: dict, digits: int = 3) -> str:
    return f"{result['mean']:+.{digits}f} [{result['low']:+.{digits}f}, {result['high']:+.{digits}f}]"


def fmt_mean(triple: tuple[float, float, float], digits: int = 3) -> str:
    return f"{triple[0]:.{digits}f} [{triple[1]:.{digits}f}, {triple[2]:.{digits}f}]"


def write_between_markers(path: Path, section: str, begin: str, end: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the part of ``path`` between
    those markers, or after the report's text when it has none yet: the way other benchmarks add to this report."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    path.write_text(text, encoding="utf-8")


def calibration_table(rows: list[dict]) -> str:
    kinds = ("faithful", "faithful, blurred", "swapped", "wrong digit")
    lines = ["| verifier | digits | " + " | ".join(kinds) + " |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]['mean']:.3f} / {r[k]['above_0.5']:.1%} / {r[k]['judged_faithful']:.1%}" for k in kinds]
        lines.append(f"| `{r['verifier']}` | half {r['digits']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attention_section(rep: dict) -> list[str]:
    a = rep["attention"]
    judge, mlp = rep["judges"]
    lines = ["## Attention baselines", "",
             f"InitNO and Attend-and-Excite, run through the same `optimize()` (the digits' token positions found from "
             f"the prompt: the two digits, e.g. tokens 2 and 6 of \"a 3 left of a 6\"), each make one image per item "
             f"from the item's seeded latent. They cover **only {a['items']} items: the {a['prompts']} prompts of the "
             f"first sample with seeds {', '.join(map(str, a['seeds']))}**; every other row below is the "
             "same method as in the tables above, restricted to exactly these items, so all differences are paired. "
             "Their compute per item differs from a generation of the searches: UNet forwards (both halves of "
             "classifier-free guidance) and backwards through the UNet per item, and CPU seconds per item (the "
             "searches' from the measured rate above, the attention baselines' from their own run, one thread, "
             "measured at another time, under another load, so compare them roughly)."]
    plain = next((r for r in a["rows"] if r["label"] == LABELS["none"]), None)
    if plain:
        costs = [r for r in a["rows"] if r["label"] in (LABELS[m] for m in ATTENTION)]
        lines[-1] += (" In seconds one image of " + " and one of ".join(
            f"{r['label']} costs about {r['cpu_seconds'] / plain['cpu_seconds']:.0f} plain generations" for r in costs)
            + "; they are not in the equal-seconds comparisons, which would give the searches that many generations.")
    lines += ["",
             f"| method | generations | UNet forwards / item | UNet backwards / item | CPU s / item | guiding | "
             f"held-out ({SHORT[judge]}) [95 % CI] | {SHORT[judge]}: seen / held-out comb. | held-out ({SHORT[mlp]}) [95 % CI] |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in a["rows"]:
        j, m = r[judge], r[mlp]
        lines.append(f"| {r['label']} | {r['generations']} | {r['model_evals']:.0f} | {r['model_backwards']:.0f} | "
                     f"{r['cpu_seconds']:.2f} | {r['guiding'][0]:.3f} | {fmt_mean(j['score'])} | "
                     f"{j['seen']:.3f} / {j['held_out_combinations']:.3f} | {fmt_mean(m['score'])} |")
    lines += ["", f"Held-out score a − b on these items (paired by item, seeds averaged per prompt, bootstrap over "
              f"the {a['prompts']} prompts; one sample, so no replication within the run):", "",
              f"| a | b | {SHORT[judge]} [95 % CI] | prompts a > b / a < b | sign test p | verdict ({SHORT[judge]}) | "
              f"{SHORT[mlp]} [95 % CI] | verdict ({SHORT[mlp]}) |", "|---|---|---|---|---|---|---|---|"]
    for p, q in zip(a["pairs"][judge], a["pairs"][mlp]):
        c = p["pooled"]
        lines.append(f"| {p['a']} | {p['b']} | {fmt_ci(c)} | {c['positive']} / {c['negative']} | {c['sign_p']:.2g} | "
                     f"{p['verdict']} | {fmt_ci(q['pooled'])} | {q['verdict']} |")
    lines.append("")
    return lines


def both_samples_agree(pair: dict) -> bool:
    """Each sample's own interval excludes zero, on the same side as the pooled difference."""
    sign = np.sign(pair["pooled"]["mean"])
    return all(s["significant"] and np.sign(s["mean"]) == sign for s in pair["samples"])


def conclusions(rep: dict) -> list[str]:
    """The orderings the intervals support, and those they do not, in words (generated, not hand-written)."""
    judge = rep["primary_judge"]

    def describe(pairs: list[dict]) -> list[str]:
        supported = [p for p in pairs if p["verdict"].startswith("supported")]
        split = [p for p in pairs if not p["verdict"].startswith("supported") and p["pooled"]["significant"]]
        other = [p for p in pairs if not p["pooled"]["significant"]]
        out = []
        for p in supported:
            flip = p["pooled"]["mean"] < 0
            winner, loser = (p["b"], p["a"]) if flip else (p["a"], p["b"])
            c = p["pooled"]
            gap = {"mean": -c["mean"], "low": -c["high"], "high": -c["low"]} if flip else c
            agree = "in both samples on their own too" if both_samples_agree(p) else "not in each sample on its own"
            out.append(f"- **{winner} > {loser}**: {fmt_ci(gap)}, sign test p = {c['sign_p']:.2g} ({agree}).")
        if split:
            out.append("- Interval excludes zero but the sign test does not (not claimed): " + "; ".join(
                f"{p['a']} vs {p['b']} ({fmt_ci(p['pooled'])}, p = {p['pooled']['sign_p']:.2g})" for p in split) + ".")
        if other:
            out.append("- Not significant: " + "; ".join(f"{p['a']} vs {p['b']} ({fmt_ci(p['pooled'])})" for p in other)
                       + ".")
        return out

    lines = ["## Conclusions", "",
             f"Generated from the intervals above (held-out score, `{judge}`, pooled over both samples).", "",
             "At equal generations:", ""]
    lines += describe(rep["pairs"][judge])
    for block in rep["equal_seconds"]:
        lines += ["", f"At the seconds of Noise Diffusion with {block['nd_epochs']} epochs (ranking "
                  f"{' > '.join(block['ranking'])}):", ""]
        lines += describe(block["pairs"])
    hacked = [r["label"] for r in rep["rows"] if r[judge]["hacking"]["low"] > 0]
    lines += ["", "Verifier hacking (guide − held-out, interval above zero): "
              + (", ".join(hacked) if hacked else "none") + ".", ""]
    return lines


def render(rep: dict, figures: str, stem: str) -> str:
    lines = header(rep) + equal_generations_section(rep, figures, stem) + equal_seconds_section(rep)
    lines += conclusions(rep)
    if rep.get("attention"):
        lines += attention_section(rep)
    return "\n".join(lines + closing_sections(rep, figures, stem))


def header(rep: dict) -> list[str]:
    """The title, how the report was made (the machine it measured, read when it ran) and the statistics."""
    judge, mlp = rep["judges"]
    n_items = sum(len(s) * len(ss) for s, ss in zip(rep["samples"], rep["seeds"]))
    sizes = " and ".join(f"{len(s)} prompts x seeds {', '.join(map(str, ss))}" for s, ss in zip(rep["samples"], rep["seeds"]))
    title = "Replication in the toy world" + (" — QUICK RUN (small sample, not the full replication)" if rep["quick"] else "")
    lines = [f"# {title}", "",
             f"Made by `{rep['command']}` ({rep['date']}, {rep['machine']}; "
             f"{rep['wall_seconds'] / 60:.1f} min wall, {rep['cpu_seconds'] / 60:.1f} CPU-min" +
             (f"; scores read from the `--raw` file of an earlier run with the same settings"
              + (f", {', '.join(rep['run_now'])} run now" if rep.get("run_now") else "")
              + ", times summed over both" if rep.get("raw_reused") else "") + ").", "",
             f"{len(rep['samples'])} disjoint prompt samples, {sizes} = {n_items} items (half of the prompts of each "
             f"sample are held-out combinations, digit pairs never drawn together in the generator's training "
             f"canvases; every relation in turn). Guided by `{rep['guide']}` "
             f"({rep['candidates']} candidate noises per Noise Diffusion epoch); every image is judged by `{judge}` "
             f"(**primary**; a residual CNN trained with augmentation on the other half of the digits) and by `{mlp}` "
             f"(the MLP), which the search never sees. A method's result after k generations is the image with the best "
             f"guiding score among its first k. The plain sampler is generation 1 of every search (same seeded latent); "
             f"the 5- and 10-epoch Noise Diffusion rows are the first epochs of the longest run (the loop's randomness "
             f"does not depend on the epoch budget).", "",
             "**Statistics.** Every difference is paired by (prompt, seed); the seeds of a prompt are averaged first, "
             f"and the 95 % interval is a percentile bootstrap over prompts ({rep['resamples']:,} resamples). The sign "
             "test counts prompts whose mean difference is positive (two-sided, exact, ties left out). An ordering is "
             f"called **supported** when the pooled interval (both samples, {sum(len(x) for x in rep['samples'])} "
             "prompts) excludes zero *and* the sign test gives p < 0.05; otherwise **not significant**. The two "
             "samples' own differences are shown beside it, as the replication within the run. With many pairs, a few "
             "borderline 'supported' verdicts can be chance (no multiplicity correction).", "",
    ]
    return lines


def equal_generations_section(rep: dict, figures: str, stem: str) -> list[str]:
    judge, mlp = rep["judges"]
    lines = ["## Equal generations", "",
             f"| method | generations | guiding | held-out ({SHORT[judge]}) [95 % CI] | accuracy ({SHORT[judge]}) | "
             f"held-out ({SHORT[mlp]}) | accuracy ({SHORT[mlp]}) | {SHORT[judge]}: seen / held-out comb. | "
             f"{SHORT[judge]}: sample 1 / sample 2 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        j, m = r[judge], r[mlp]
        lines.append(f"| {r['label']} | {r['generations']} | {r['guiding'][0]:.3f} | {fmt_mean(j['score'])} | "
                     f"{j['accuracy'][0]:.1%} | {m['score'][0]:.3f} | {m['accuracy'][0]:.1%} | "
                     f"{j['seen']:.3f} / {j['held_out_combinations']:.3f} | "
                     f"{' / '.join(f'{x:.3f}' for x in j['per_sample'])} |")
    lines += ["", f"![held-out score vs generations and vs seconds]({figures}/{stem}_curves.png)", "",
              f"### Every pair, held-out score ({SHORT[judge]}), a − b", "",
              "| a | b | sample 1 | sample 2 | pooled [95 % CI] | prompts a > b / a < b | sign test p | "
              f"pooled with {SHORT[mlp]} | verdict ({SHORT[judge]}) |", "|---|---|---|---|---|---|---|---|---|"]
    mlp_pairs = {(p["a"], p["b"]): p for p in rep["pairs"][mlp]}
    for p in rep["pairs"][judge]:
        pooled = p["pooled"]
        lines.append(f"| {p['a']} | {p['b']} | {' | '.join(fmt_ci(s) for s in p['samples'])} | {fmt_ci(pooled)} | "
                     f"{pooled['positive']} / {pooled['negative']} | {pooled['sign_p']:.2g} | "
                     f"{fmt_ci(mlp_pairs[p['a'], p['b']]['pooled'])} | {p['verdict']} |")
    return lines


def equal_seconds_section(rep: dict) -> list[str]:
    t = rep["timing"]
    rates = {m: t["seconds_per_generation"][m] for m in SEARCHES}
    judge = rep["judges"][0]
    lines = ["", "## Equal seconds", "",
              f"Seconds per generation per item, measured first in {t['rounds']} interleaved rounds of {t['epochs'] + 1} "
              f"generations on {t['items']} items (order rotated each round, so the machine's load affects all methods "
              "alike). The equal-seconds comparison uses the process's **CPU time** (one thread: the wall time an idle "
              "machine would take; wall time under load is far noisier): " +
              ", ".join(f"{LABELS[m]} {v['rate'] * 1000:.1f} ms ({v['ratio_to_best_of_n']:.2f}x best-of-N; rounds "
                        f"{v['ratio_min']:.2f}–{v['ratio_max']:.2f}x)" for m, v in rates.items()) +
              ". Wall time in the same rounds: " +
              ", ".join(f"{LABELS[m]} {v['wall_rate'] * 1000:.1f} ms ({v['wall_ratio_to_best_of_n']:.2f}x; rounds "
                        f"{v['wall_ratio_min']:.2f}–{v['wall_ratio_max']:.2f}x)" for m, v in rates.items()) +
              ". In the main runs (one batch of all items per method, not interleaved) the median epoch took, in wall time, " +
              ", ".join(f"{LABELS[m]} {t['main_run_epoch_seconds'][m] * 1000:.1f} ms" for m in SEARCHES) +
              " per item. Noise Diffusion and gradient ascent also back-propagate through the guide, the VAE decoder "
              "and the scheduler's steps every epoch, with the UNet's predictions held fixed (no backward pass through "
              "the UNet), which is why their extra cost is small next to 25 guided UNet steps. Each budget below is the time of Noise Diffusion at k epochs; the "
              "other searches get the generations it buys at their own rate (the ratio to best-of-N is measured within "
              "rounds, so the machine's changing load cancels out of it).", ""]
    unmatched = [e for e in rep["nd_epochs"] if e not in {b["nd_epochs"] for b in rep["equal_seconds"]}]
    if unmatched:
        lines += [f"Noise Diffusion at {', '.join(map(str, unmatched))} epochs is compared at equal generations only: "
                  "the baselines were not run long enough to match its seconds (`--match_all_budgets` does).", ""]
    for block in rep["equal_seconds"]:
        lines += [f"### Budget of Noise Diffusion at {block['nd_epochs']} epochs "
                  f"({block['budget_ms_per_item']:.0f} ms per item)", "",
                  f"| rank | method | generations | held-out ({SHORT[judge]}) [95 % CI] | guiding |", "|---|---|---|---|---|"]
        for rank, name in enumerate(block["ranking"], 1):
            m = block["methods"][name]
            lines.append(f"| {rank} | {name} | {m['generations']} | {fmt_mean(m['score'])} | {m['guiding']:.3f} |")
        if block.get("not_run"):
            lines += ["", f"Not run long enough for this budget: {', '.join(block['not_run'])}."]
        lines += ["", "| a | b | sample 1 | sample 2 | pooled [95 % CI] | sign test p | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for p in block["pairs"]:
            lines.append(f"| {p['a']} | {p['b']} | {' | '.join(fmt_ci(s) for s in p['samples'])} | "
                         f"{fmt_ci(p['pooled'])} | {p['pooled']['sign_p']:.2g} | {p['verdict']} |")
        lines.append("")
    return lines


def closing_sections(rep: dict, figures: str, stem: str) -> list[str]:
    """Verifier hacking and the judges on rendered canvases."""
    judge, mlp = rep["judges"]
    lines = ["## Verifier hacking", "",
              "Guiding score minus held-out score of the same kept images, mean over prompts with its 95 % interval "
              "(the verifiers are all digit classifiers scoring the same probability, so the scales are comparable; "
              "the guide also scores images drawn from the same digits, so part of the gap would exist without search).",
              "", f"| method | generations | guide − {SHORT[judge]} | guide − {SHORT[mlp]} |", "|---|---|---|---|"]
    for r in rep["rows"]:
        lines.append(f"| {r['label']} | {r['generations']} | {fmt_ci(r[judge]['hacking'])} | {fmt_ci(r[mlp]['hacking'])} |")
    lines += ["", "## Judges on rendered canvases", "",
              "Each verifier on canvases drawn from the specification with the digit images it never saw in training "
              f"({rep['calibration'][0]['faithful']['count']} per case): a faithful scene, the order swapped (spatial "
              "prompts), one digit replaced by a third, and the faithful canvases blurred (Gaussian, sigma 0.8 px). Cells: mean "
              "score / share above 0.5 / share judged faithful.", "",
              calibration_table(rep["calibration"]), "",
              "![best images of the first held-out-combination items (first seed); the number is the primary judge's "
              f"score, green = judged faithful]({figures}/{stem}.png)", "",
              "See `docs/toy_world.md` for the world, the models and their training.", ""]
    return lines


def curves_figure(runs: dict, rates: dict, groups: np.ndarray, budgets: list[float], path: Path, resamples: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_gen, by_sec) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, run in runs.items():
        count = run["guide"].shape[1]
        xs = np.arange(1, count + 1)
        stats = np.array([mean_interval(at_generations(run, JUDGE, k), groups, resamples=resamples) for k in xs])
        for axis, x in ((by_gen, xs), (by_sec, xs * rates[method] * 1000)):
            line, = axis.plot(x, stats[:, 0], label=LABELS[method])
            axis.fill_between(x, stats[:, 1], stats[:, 2], color=line.get_color(), alpha=0.18, linewidth=0)
    for budget in budgets:
        by_sec.axvline(budget * 1000, color="grey", linestyle=":", linewidth=1)
    by_gen.set_xlabel("generations per item (1 = the plain sampler)")
    by_sec.set_xlabel("measured CPU milliseconds per item (dotted: Noise Diffusion's budgets)")
    for axis in (by_gen, by_sec):
        axis.set_ylabel(f"held-out score ({JUDGE})")
        axis.grid(alpha=0.3)
    by_gen.legend(fontsize=8, loc="lower right")
    fig.suptitle("mean held-out score of the kept image, 95 % bootstrap band over prompts", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def images_figure(runs: dict, rows: list[Row], prompts: list[str], keep: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.method == "none" or r.method != "noise_diffusion" or r.epochs == rows[1].epochs]
    fig, axes = plt.subplots(len(shown), len(keep), figsize=(1.3 * len(keep), 1.45 * len(shown)), squeeze=False)
    for row_index, row in enumerate(shown):
        run = runs["best_of_n" if row.method == "none" else row.method]
        index = best_index(run["guide"][keep], row.generations)
        for col, item in enumerate(keep):
            ax = axes[row_index][col]
            ax.imshow(run["images"][col, index[col]].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            score = run[JUDGE][item, index[col]]
            faithful = run[JUDGE + ":faithful"][item, index[col]]
            ax.set_xlabel(f"{score:.2f}", fontsize=8, color="green" if faithful else "red", labelpad=1)
            if row_index == 0:
                ax.set_title(prompts[item].removeprefix("a "), fontsize=7)
            if col == 0:
                ax.set_ylabel(row.label.replace(", ", "\n"), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
