"""The browsable report: one self-contained ``index.html`` beside ``summary.md``.

Per prompt and seed, the initial and best image of every method side by side with the guiding verifier's scores and
every held-out verifier's; the rows sort by any method's gain and filter by category and method. A first section
lists the runs whose best image the guide scores most above a held-out verifier (the per-run term of the report's
"guide − held-out"): verifier hacking, seen. Images are relative links to the saved PNGs, loaded lazily; the page's
style and script are inline, so it opens from the disk with no network.
"""

from __future__ import annotations

import html
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import quote

from .methods import METHODS
from .results import write_bytes_atomic

INDEX_FILE = "index.html"
#: runs shown in the section on guide/held-out disagreement
DISAGREEMENT_ROWS = 12
#: longest side of an image on the page, in CSS pixels
IMAGE_PX = 112


@dataclass(frozen=True)
class HtmlRun:
    """What the page shows of one finished run (one method, prompt and seed)."""

    method: str
    category: str
    prompt: str
    seed: int
    folder: Path  # the run's folder (absolute, or relative to the working directory)
    initial_file: str  # file names inside ``folder``
    best_file: str
    guide: str  # the guiding verifier's name
    guide_initial: float
    guide_best: float
    best_epoch: int
    #: held-out verifier -> (its score of the initial image, its score of the best image)
    held_out: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        return self.guide_best - self.guide_initial

    def disagreement(self) -> tuple[float, str] | None:
        """The largest guide best − held-out best over the held-out verifiers, with that verifier; None without any."""
        gaps = [(self.guide_best - best, name) for name, (_, best) in sorted(self.held_out.items())]
        return max(gaps, key=lambda gap: gap[0]) if gaps else None


def runs_from_collected(runs: Iterable) -> list[HtmlRun]:
    """The page's view of the runs of :func:`noise_diffusion.report.collect` (each a ``Run``: its
    :class:`~noise_diffusion.records.RunRecord`, folder and score files)."""
    view = []
    for run in runs:
        record = run.record
        view.append(HtmlRun(
            method=run.method, category=run.category, prompt=record.prompt, seed=record.seed,
            folder=Path(run.folder), initial_file=record.files.initial, best_file=record.files.best,
            guide=str(record.verifier.model), guide_initial=record.initial_score, guide_best=record.best_score,
            best_epoch=record.best_epoch,
            held_out={name: (s.initial_score, s.best_score) for name, s in run.held_out.items()}))
    return view


def write_index_html(root: str | os.PathLike, runs: Sequence[HtmlRun]) -> Path:
    """Write ``<root>/index.html`` for ``runs`` (atomically) and return its path."""
    root = Path(root)
    path = root / INDEX_FILE
    write_bytes_atomic(path, render_index(root, runs).encode("utf-8"))
    return path


def render_index(root: Path, runs: Sequence[HtmlRun]) -> str:
    """The page's text; image links are relative to ``root``, the folder the page is written to."""
    methods = _method_order({r.method for r in runs})
    categories = sorted({r.category for r in runs})
    groups = _group_by_prompt_and_seed(runs, methods)
    body = [
        f"<h1>Evaluation report: {_text(root.resolve().name)}</h1>",
        f"<p>{len(runs)} runs of {len(methods)} methods on {len(groups)} prompt–seed pairs; guided by "
        f"{_text(', '.join(sorted({r.guide for r in runs})))}. Tables and intervals: "
        f"<a href=\"summary.md\">summary.md</a>.</p>",
        _controls(methods, categories),
        *_disagreement_section(root, runs),
        *_runs_section(root, groups, methods),
    ]
    return PAGE.format(title=_text(f"Evaluation report: {root.resolve().name}"), style=STYLE, script=SCRIPT,
                       body="\n".join(body))


def _method_order(methods: set[str]) -> list[str]:
    known = list(METHODS)
    return sorted(methods, key=lambda m: (known.index(m) if m in known else len(known), m))


def _group_by_prompt_and_seed(runs: Sequence[HtmlRun], methods: list[str]) -> list[dict[str, HtmlRun]]:
    """One dict method -> run per (prompt, seed), in the order of the runs' categories, prompts and seeds."""
    groups: dict[tuple, dict[str, HtmlRun]] = defaultdict(dict)
    for run in sorted(runs, key=lambda r: (r.category, r.prompt, r.seed, methods.index(r.method))):
        groups[(run.prompt, run.seed)].setdefault(run.method, run)
    return list(groups.values())


def _controls(methods: list[str], categories: list[str]) -> str:
    boxes = "".join(f"<label><input type=\"checkbox\" name=\"method\" value=\"{_attr(m)}\" checked> {_text(m)}</label>"
                    for m in methods)
    category_options = "".join(f"<option value=\"{_attr(c)}\">{_text(c)}</option>" for c in categories)
    sort_options = ["<option value=\"order\">category, prompt, seed</option>"]
    for index, method in enumerate(methods):
        sort_options.append(f"<option value=\"gain:desc:{index}\">gain of {_text(method)}, largest first</option>")
        sort_options.append(f"<option value=\"gain:asc:{index}\">gain of {_text(method)}, smallest first</option>")
    return (f"<form id=\"controls\" onsubmit=\"return false\"><fieldset><legend>methods</legend>{boxes}</fieldset>"
            f"<label>category <select id=\"category\"><option value=\"\">all</option>{category_options}</select>"
            f"</label> <label>sort <select id=\"sort\">{''.join(sort_options)}</select></label></form>")


def _disagreement_section(root: Path, runs: Sequence[HtmlRun]) -> list[str]:
    """The runs whose best image the guide scores most above a held-out verifier, largest gap first."""
    searched = [run for run in runs if run.best_epoch > 0 and run.disagreement() is not None]
    ranked = sorted(((run.disagreement(), run) for run in searched), key=lambda item: -item[0][0])
    lines = ["<section id=\"disagreement\"><h2>Guide and held-out verifier disagree most</h2>"]
    if not ranked:
        return lines + ["<p>No run whose best image is not its initial one was scored by a held-out verifier "
                        "(evaluate.py --eval_vqa_model NAME adds one).</p>", "</section>"]
    lines.append(f"<p>The {min(len(ranked), DISAGREEMENT_ROWS)} runs (of {len(ranked)} whose search moved off the "
                 "initial image and that a held-out verifier scored) whose best image the guiding verifier scores "
                 "most above a held-out one: where a search pleased its guide more than an independent judge, the "
                 "images show what it found. Meaningful when the two verifiers score on comparable scales.</p>")
    lines.append("<div class=\"cards\">")
    for (gap, verifier), run in ranked[:DISAGREEMENT_ROWS]:
        lines.append(f"<div class=\"card\" data-method=\"{_attr(run.method)}\" data-category=\"{_attr(run.category)}\">"
                     f"<div><b class=\"gap\">{gap:+.3f}</b> guide − {_text(verifier)}</div>"
                     f"<div>{_text(run.method)}: <span class=\"text\">{_text(run.prompt)}</span> <small>seed "
                     f"{run.seed} · {_text(run.category)}</small></div>{_run_cell(root, run, tag='div')}</div>")
    return lines + ["</div></section>"]


def _runs_section(root: Path, groups: list[dict[str, HtmlRun]], methods: list[str]) -> list[str]:
    lines = ["<section id=\"all\"><h2>Every prompt and seed</h2>",
             "<p>Each cell: the initial image (left) and the best image (right) of one method, with the guiding "
             "verifier's scores (initial → best, gain) and every held-out verifier's scores of the same two images."
             "</p>", "<table id=\"runs\"><thead><tr><th>prompt</th>"]
    lines += [f"<th data-method=\"{_attr(m)}\">{_text(m)}</th>" for m in methods]
    lines.append("</tr></thead><tbody>")
    for order, group in enumerate(groups):
        first = next(iter(group.values()))
        cells = [_run_cell(root, group[m], method=m) if m in group
                 else f"<td data-method=\"{_attr(m)}\" class=\"none\">no run</td>" for m in methods]
        lines.append(f"<tr data-order=\"{order}\" data-category=\"{_attr(first.category)}\">{_prompt_cell(first)}"
                     f"{''.join(cells)}</tr>")
    return lines + ["</tbody></table></section>"]


def _prompt_cell(run: HtmlRun) -> str:
    return (f"<td class=\"prompt\"><span class=\"text\">{_text(run.prompt)}</span><br><small>seed {run.seed} · "
            f"{_text(run.category)}</small></td>")


def _run_cell(root: Path, run: HtmlRun, method: str | None = None, tag: str = "td") -> str:
    """The two images of a run with their scores; ``method`` marks the cell as that method's column."""
    column = f" data-method=\"{_attr(method)}\" data-gain=\"{run.gain!r}\"" if method is not None else ""
    scores = [f"<div>{_text(run.guide)} {run.guide_initial:.3f} → <b>{run.guide_best:.3f}</b> "
              f"(<span class=\"gain\">{run.gain:+.3f}</span>, epoch {run.best_epoch})</div>"]
    scores += [f"<div class=\"held\">{_text(name)} {initial:.3f} → {best:.3f} ({best - initial:+.3f})</div>"
               for name, (initial, best) in sorted(run.held_out.items())]
    images = "".join(_image(root, run.folder / name, label)
                     for name, label in ((run.initial_file, "initial"), (run.best_file, "best")))
    return f"<{tag} class=\"run\"{column}><div class=\"pair\">{images}</div>{''.join(scores)}</{tag}>"


def _image(root: Path, path: Path, label: str) -> str:
    """An ``<img>`` linking to ``path`` relative to ``root``; small images are enlarged without smoothing."""
    size = _png_size(path)
    style = ""
    if size is not None:
        scale = IMAGE_PX / max(size)
        width, height = round(size[0] * scale), round(size[1] * scale)
        style = f" width=\"{width}\" height=\"{height}\"" + (" class=\"pixelated\"" if scale > 1 else "")
    source = quote(Path(os.path.relpath(path, root)).as_posix())
    return (f"<figure><a href=\"{source}\"><img src=\"{source}\" alt=\"{label} image\" loading=\"lazy\"{style}></a>"
            f"<figcaption>{label}</figcaption></figure>")


def _png_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the PNG header (the page lays out before images load), None if it is no PNG."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(24)
    except OSError:
        return None
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    return (width, height) if width > 0 and height > 0 else None


def _text(value: str) -> str:
    return html.escape(str(value), quote=False)


def _attr(value: str) -> str:
    return html.escape(str(value), quote=True)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body>
{body}
<script>{script}</script>
</body></html>
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 2em; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; text-align: left; }
thead th { background: #f3f3f3; position: sticky; top: 0; }
td.prompt { max-width: 16em; } td.num { text-align: right; white-space: nowrap; } td.none { color: #999; }
.pair { display: flex; gap: 4px; } figure { margin: 0; text-align: center; }
figcaption, small, .held { font-size: 12px; color: #555; }
img { background: #000; display: block; } img.pixelated { image-rendering: pixelated; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 2em; }
.card { border: 1px solid #ccc; padding: 6px; width: 19em; } .gap { color: #b00; }
#controls { display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap; margin: 1em 0; }
fieldset { border: 1px solid #ccc; } fieldset label { margin-right: 1em; }
[hidden] { display: none !important; }
"""

# Filtering hides every element whose data-method is unticked or whose data-category is not the chosen one; sorting
# reorders the rows of the table of every prompt and seed by one method's gain (rows without that method last).
SCRIPT = """
(function () {
  var all = function (selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); };
  var category = document.getElementById('category'), sort = document.getElementById('sort');
  function filter() {
    var shown = {};
    all('input[name=method]').forEach(function (box) { shown[box.value] = box.checked; });
    all('[data-method], [data-category]').forEach(function (el) {
      var method = el.getAttribute('data-method'), cat = el.getAttribute('data-category');
      el.hidden = (method !== null && !shown[method]) || (cat !== null && category.value !== '' && cat !== category.value);
    });
  }
  function key(row, column) {
    var cell = row.cells[1 + column], gain = cell ? cell.getAttribute('data-gain') : null;
    return gain === null ? NaN : Number(gain);
  }
  function order() {
    var body = document.querySelector('#runs tbody'), spec = sort.value.split(':');
    var rows = all('tr', body), sign = spec[1] === 'asc' ? 1 : -1, column = Number(spec[2]);
    rows.sort(function (a, b) {
      var byOrder = Number(a.getAttribute('data-order')) - Number(b.getAttribute('data-order'));
      if (spec[0] !== 'gain') { return byOrder; }
      var ka = key(a, column), kb = key(b, column);
      if (isNaN(ka) || isNaN(kb)) { return isNaN(ka) - isNaN(kb) || byOrder; }
      return sign * (ka - kb) || byOrder;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  all('input[name=method]').forEach(function (box) { box.addEventListener('change', filter); });
  category.addEventListener('change', filter);
  sort.addEventListener('change', order);
})();
"""
