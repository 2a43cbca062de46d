"""``synaprune report``: one static HTML report of a results database (and experiments).

    synaprune report --db results.db --out report/
    synaprune report --db results.db --out report/ --experiments out/experiments --problem xor

The report is a folder: ``index.html`` and PNG figures in ``fig/``, nothing else, no script, no
font, no style sheet or image from the network, so it opens from disk in any browser. For each
problem: every method's outcomes (success and, where the database records them, the failure
kinds) with 95 % Wilson intervals, as numbers and a figure; loss curves (median and 10-90 %
band over seeds, from the stored curves) at equal steps and, where costs are stored, at equal
cost; every run's final loss (the global loss marked); and the diagnosis of a few stuck runs,
linked from the table rows they come from. With ``--experiments DIR``, each experiment's
claim, whether it held and its figure. A header says what was run (commands, seeds, budgets,
versions) and the data's date.

The same database gives the same bytes: the date is the newest run's (or ``--date``), figures
carry no metadata, jitter is seeded and the diagnoses run on one thread. The folder is written
next to ``--out`` and renamed over it only when complete (:func:`synaprune._io.atomic_directory`);
an existing ``--out`` is replaced only if it is empty or a report written by this command.
"""

from __future__ import annotations

import html
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synaprune._io import atomic_directory
from synaprune.bench.methods import method_label
from synaprune.bench.summary import summarize, wilson_interval
from synaprune.errors import UsageError
from synaprune.report import _stats
from synaprune.report._data import KIND_LABELS, RunTable, load_runs
from synaprune.report.figures import (
    OUTCOME_COLORS,
    outcome_label,
    plot_final_losses,
    plot_loss_bands,
    plot_outcomes,
)

__all__ = ["MARKER", "check_destination", "write_report"]

# A file in every report folder: an existing --out is only replaced if it holds this (or is
# empty), so that a mistyped --out never deletes a folder of the user's.
MARKER = ".synaprune-report"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;
padding:0 1.2em 3em;color:#222;line-height:1.4}
h1{margin-top:.8em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:.6em;overflow-x:auto;white-space:pre-wrap;
overflow-wrap:anywhere}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.3em .7em;margin:.5em 0}
.meta{color:#555;font-size:.9em}img{max-width:100%;height:auto;display:block;margin:.6em 0}
.held{color:#1b7f3b;font-weight:bold}.nothold{color:#b3261e;font-weight:bold}
summary{cursor:pointer;color:#444;font-size:.9em}.undecided{color:#8a6d00;font-weight:bold}.sw{display:inline-block;width:.8em;height:.8em;
margin-right:.25em;vertical-align:-.05em}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _pct(k: int, n: int) -> str:
    if n == 0:
        return "-"
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f}% ({k}/{n}) [{100 * lo:.1f}, {100 * hi:.1f}]"


def _num(value: float | None, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    return format(value, spec)


def _seed_ranges(seeds: Sequence[int]) -> str:
    seeds = sorted(set(seeds))
    parts: list[str] = []
    start = prev = seeds[0]
    for s in [*seeds[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ", ".join(parts)


def check_destination(out: str | Path) -> Path:
    """Check, before any work, that ``out`` may be written and replaced.

    Raises:
        UsageError: If ``out`` is a file, a folder that is neither empty nor a report of this
            command, or its parent folder cannot be written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' exists and is not a folder; choose a new folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UsageError(f"--out '{out}' is a folder that holds other files and no report of "
                         "synaprune report; it would be replaced: choose a new or empty folder")
    parent = out.absolute().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot write --out '{out}': {existing} is not a folder")
    try:  # a real write: os.access is wrong for root and on some file systems
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as exc:
        raise UsageError(f"cannot write --out '{out}': {exc.strerror or exc} in {existing}; "
                         "choose a folder you can write") from None
    return out


@dataclass
class _Problem:
    spec: str
    anchor: str
    rows: list[dict[str, Any]]
    global_loss: float | None = None
    tolerance: float | None = None
    per_example: bool | None = None
    notes: list[str] = field(default_factory=list)
    diagnoses: dict[int, tuple[dict[str, Any], str, str]] = field(default_factory=dict)


def _groups(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int, list[dict[str, Any]]]]:
    """(method spec, budget, runs), ordered by success rate then median final loss, as
    ``synaprune results --plot`` orders them."""
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["method"], int(r["budget"])), []).append(r)
    order = {(s.method, s.budget): (-s.success_rate, s.median_final_loss, s.method, s.budget)
             for s in summarize(rows)}
    return [(m, b, by[(m, b)]) for m, b in sorted(by, key=lambda k: order[k])]


def _label(method: str, budget: int, budgets: set[int]) -> str:
    return method_label(method) + (f" ({budget} steps)" if len(budgets) > 1 else "")


def _diagnose(db: str, run: dict[str, Any], k: int, maxiter: int) -> tuple[str, str]:
    """(verdict line, full text) of the diagnosis of one stored run, or why there is none."""
    import torch

    from synaprune.diagnose.cli import diagnose_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same sums in the same order on every build
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a Lanczos that did not converge is in the text
            _, diag = diagnose_run(db, run["id"], k=k, lanczos_maxiter=maxiter, progress=False)
    except UsageError as exc:
        return "not diagnosed", str(exc)
    finally:
        torch.set_num_threads(threads)
    text = diag.format()
    return text.splitlines()[0].removeprefix("Verdict: "), text


def _problem_notes(p: _Problem, table: RunTable,
                   groups: list[tuple[str, int, list[dict[str, Any]]]]) -> None:
    seeds = {(m, b): frozenset(r["seed"] for r in runs) for m, b, runs in groups}
    if len(set(seeds.values())) > 1:
        parts = [f"{method_label(m)}: {len(s)} runs (seeds {_seed_ranges(list(s))})"
                 for (m, _), s in seeds.items()]
        p.notes.append("Partial: the methods were run on different seeds, so their rates are "
                       "not paired; " + "; ".join(parts) + ".")
    _coverage_note(p, table, "kind", "Failure kinds",
                   ": failed runs are shown as 'failed, kind not recorded' (diverged runs are "
                   "known from their status).",
                   " (written before the database recorded them).")
    bad = _stats.kind_mismatches(p.rows)
    if bad:
        ids = ", ".join(str(r["id"]) for r in bad[:10])
        p.notes.append(f"{len(bad)} runs have a recorded kind that contradicts their status "
                       f"(ids {ids}{', ...' if len(bad) > 10 else ''}): the figures show the "
                       "recorded kind, the success column the status.")
    _coverage_note(p, table, "cost", "Costs",
                   ": no equal-cost view (the equal-steps view is exact for every method; "
                   "methods whose steps cost more, such as sam or saddle-free-newton, are "
                   "favoured by it).",
                   ": the equal-cost view leaves them out.")


def _coverage_note(p: _Problem, table: RunTable, column: str, what: str, absent: str,
                   partial: str) -> None:
    """Say when ``column`` is not in the database at all, or is NULL for some runs."""
    if column not in table.recorded:
        p.notes.append(f"{what} not recorded in this database{absent}")
        return
    missing = sum(1 for r in p.rows if r[column] is None)
    if missing:
        p.notes.append(f"{what} not recorded for {missing} of {len(p.rows)} runs{partial}")


def _write_problem(p: _Problem, table: RunTable, fig_dir: Path, n_diag: int, k: int,
                   maxiter: int, tick: Callable[[], None]) -> str:
    groups = _groups(p.rows)
    budgets = {b for _, b, _ in groups}
    labelled = [(_label(m, b, budgets), runs) for m, b, runs in groups]
    _problem_notes(p, table, groups)
    threshold = (None if p.global_loss is None or p.tolerance is None
                 else p.global_loss + p.tolerance)
    out: list[str] = [f'<section id="{p.anchor}"><h2>{_e(p.spec)}</h2>']
    facts = [f"{len(p.rows)} runs, {len(groups)} method{'s' if len(groups) != 1 else ''}"]
    if p.global_loss is not None:
        facts.append(f"global loss {p.global_loss:.6g}, success when the loss is at most "
                     f"{threshold:.6g} (tolerance {p.tolerance:.3g})")
    out.append(f'<p class="meta">{_e("; ".join(facts))}</p>')
    for note in p.notes:
        out.append(f'<p class="note">{_e(note)}</p>')

    # diagnoses first: the table links to them
    if p.per_example is False:
        diag_note = ("Stuck runs of this problem are not diagnosed: its loss is exact (no "
                     "data), and a diagnosis needs data (synaprune diagnose refuses them too).")
        picks = []
    else:
        diag_note = ""
        picks = _stats.stuck_runs(p.rows, n_diag)
    for run in picks:
        verdict, text = _diagnose(table.db, run, k, maxiter)
        p.diagnoses[run["id"]] = (run, verdict, text)
        tick()
    diag_of = {}
    for run, verdict, _ in p.diagnoses.values():
        diag_of.setdefault((run["method"], run["budget"]), []).append((run, verdict))

    step_budget = min(budgets)
    cps = {(m, b): _stats.median_cost_per_step(runs) for m, b, runs in groups}
    costs = [b * c for (_, b), c in cps.items() if c is not None]
    cost_budget = min(costs) if costs and all(c is not None for c in cps.values()) else None

    head = ["method", "runs", "success, 95% CI"]
    head += [outcome_label(o) for o in _stats.OUTCOMES
             if o != "global" and any(_stats.outcome(r) == o for r in p.rows)]
    shown_outcomes = [o for o in _stats.OUTCOMES
                      if o != "global" and any(_stats.outcome(r) == o for r in p.rows)]
    head += ["median final loss", f"success within {step_budget} steps"]
    if cost_budget is not None:
        head += ["cost per step", f"success within cost {cost_budget:.4g}"]
    head += ["diagnosed stuck runs"]
    out.append('<table><tr>' + "".join(
        f'<th class="{"l" if i == 0 else ""}">{_e(h)}</th>' for i, h in enumerate(head))
        + "</tr>")
    for (label, runs), (m, b, _) in zip(labelled, groups, strict=True):
        counts = _stats.outcome_counts(runs)
        wins = sum(1 for r in runs if r["success"])
        cells = [f'<td class="l">{_e(label)}</td>', f"<td>{len(runs)}</td>",
                 f"<td>{_e(_pct(wins, len(runs)))}</td>"]
        for o in shown_outcomes:
            c, lo, hi = counts[o]
            swatch = f'<span class="sw" style="background:{OUTCOME_COLORS[o]}"></span>'
            cells.append(f"<td>{swatch}{c} [{100 * lo:.0f}, {100 * hi:.0f}]%</td>")
        finals = sorted(r["final_loss"] if math.isfinite(r["final_loss"]) else math.inf
                        for r in runs)
        median = (finals[(len(finals) - 1) // 2] + finals[len(finals) // 2]) / 2
        cells.append(f"<td>{_num(median)}</td>")
        eq = _stats.equal_budget_success(runs, step_budget)
        cells.append(f"<td>{_e(_pct(*eq)) if eq else '-'}</td>")
        if cost_budget is not None:
            eqc = _stats.equal_budget_success(runs, cost_budget, cost=True)
            cells.append(f"<td>{_num(cps[(m, b)])}</td>")
            cells.append(f"<td>{_e(_pct(*eqc)) if eqc else '-'}</td>")
        links = [f'<a href="#run-{r["id"]}">run {r["id"]}</a>: {_e(v)}'
                 for r, v in diag_of.get((m, b), [])]
        cells.append(f'<td class="l">{"<br>".join(links) or "-"}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    out.append('<p class="meta">Success: the training loss reached the global loss within the '
               "tolerance (status ok). Failure columns: count and 95% Wilson interval of the "
               "share. Median final loss counts a diverged run as +inf. Success within N "
               "steps (cost C): solved at a step (a cost) at most the smallest budget of the "
               "problem's methods, so every method gets the same.</p>")

    figs = []
    name = f"{p.anchor}-outcomes.png"
    plot_outcomes(labelled, fig_dir / name, title=f"{p.spec}: outcomes")
    figs.append((name, "Outcomes per method"))
    bands = [(lab, bd) for lab, runs in labelled
             if (bd := _stats.loss_band(runs)) is not None]
    if bands:
        name = f"{p.anchor}-loss-steps.png"
        plot_loss_bands(bands, fig_dir / name, title=f"{p.spec}: loss at equal steps",
                        xlabel="step", threshold=threshold)
        figs.append((name, "Loss curves at equal steps"))
    if cost_budget is not None:
        cbands = [(lab, bd) for lab, runs in labelled
                  if (bd := _stats.loss_band(runs, cost=True)) is not None]
        name = f"{p.anchor}-loss-cost.png"
        plot_loss_bands(cbands, fig_dir / name, title=f"{p.spec}: loss at equal cost",
                        xlabel="cost (gradient-equivalents)", threshold=threshold)
        figs.append((name, "Loss curves at equal cost"))
    name = f"{p.anchor}-final-losses.png"
    plot_final_losses(labelled, fig_dir / name, title=f"{p.spec}: final losses",
                      global_loss=p.global_loss, threshold=threshold)
    figs.append((name, "Final losses"))
    tick()
    for name, alt in figs:
        out.append(f'<img src="fig/{name}" alt="{_e(alt)}: {_e(p.spec)}">')
    out.append('<p class="meta">Loss curves: the median over seeds and the band from the '
               "10% to the 90% quantile (order statistics); a run that stopped holds its "
               "final loss, a diverged run counts as +inf (drawn at the top edge).</p>")

    out.append(f'<h3 id="{p.anchor}-stuck">Diagnoses of stuck runs</h3>')
    if diag_note:
        out.append(f'<p class="note">{_e(diag_note)}</p>')
    elif not p.diagnoses:
        out.append('<p class="meta">No stuck run (status budget) to diagnose.</p>')
    for run, verdict, text in p.diagnoses.values():
        extra = []
        for key, what in (("kind", "recorded kind"), ("min_eig", "recorded min eigenvalue"),
                          ("saddle_index", "recorded saddle index")):
            if run.get(key) is not None:
                value = run[key]
                extra.append(f"{what} {KIND_LABELS.get(value, value) if key == 'kind' else value}")
        out.append(f'<div id="run-{run["id"]}"><h4>Run {run["id"]}: '
                   f'{_e(method_label(run["method"]))}, seed {run["seed"]}: {_e(verdict)}</h4>')
        out.append(f'<p class="meta">status {_e(run["status"])} after {run["steps"]} of '
                   f'{run["budget"]} steps, final loss {_num(run["final_loss"], ".6g")}'
                   f'{"; " + _e(", ".join(extra)) if extra else ""}; the same text: '
                   f'<code>synaprune diagnose --db {_e(table.db)} --run {run["id"]}</code></p>')
        out.append(f"<pre>{_e(text)}</pre></div>")
    out.append("</section>")
    return "\n".join(out)


def _experiments(directory: Path, fig_dir: Path, tick: Callable[[], None]) -> str:
    from synaprune.experiments import EXPERIMENTS, stored_experiment

    out = ['<section id="experiments"><h2>Experiments</h2>',
           f'<p class="meta">From {_e(directory)} (synaprune experiment NAME --out '
           f'{_e(directory)}).</p>']
    held_words = {True: ("held", "held"), False: ("did not hold", "nothold"),
                  None: ("not decidable at this scale", "undecided")}
    for name in sorted(EXPERIMENTS):
        module = EXPERIMENTS[name]
        out.append(f'<h3 id="exp-{_e(name)}">{_e(name)} (seed {_e(module.SEED)})</h3>')
        out.append(f"<p><b>Claim:</b> {_e(module.CLAIM)}</p>")
        try:
            stored = stored_experiment(name, directory)
        except ValueError as exc:
            out.append(f'<p class="note">{_e(exc)}</p>')
            continue
        if stored is None:
            out.append(f'<p class="note">Not run: <code>synaprune experiment {_e(name)} --out '
                       f'{_e(directory)}</code> (add --quick for the minute-scale version).</p>')
            continue
        version = "quick version" if stored.quick else "full size"
        if stored.summary is None:
            out.append(f'<p class="note">Incomplete ({version}): {len(stored.rows)} of '
                       f"{stored.cells} cells stored; finish with <code>synaprune experiment "
                       f"{_e(name)}{' --quick' if stored.quick else ''} --out {_e(directory)}"
                       "</code>.</p>")
            continue
        word, css = held_words[stored.summary.get("held")]
        out.append(f'<p>Claim <span class="{css}">{word}</span> ({version}, '
                   f'{stored.cells} cells): {_e(stored.summary.get("verdict", ""))}</p>')
        fig = fig_dir / f"exp-{name}.png"
        try:
            module.plot(stored.rows, fig)
            out.append(f'<img src="fig/{fig.name}" alt="experiment {_e(name)}">')
        except Exception as exc:  # a figure that cannot be drawn is said, not fatal
            out.append(f'<p class="note">Figure not drawn: {_e(type(exc).__name__)}: '
                       f"{_e(exc)}</p>")
        tick()
    out.append("</section>")
    return "\n".join(out)


def _versions() -> str:
    import matplotlib
    import numpy
    import torch

    from synaprune import __version__

    return (f"synaprune {__version__}, torch {torch.__version__}, numpy {numpy.__version__}, "
            f"matplotlib {matplotlib.__version__}, Python {platform.python_version()}")


def _header(table: RunTable, date: str | None, command: str, problems: list[_Problem],
            experiments: Path | None) -> str:
    if date is None:
        date = ("no runs" if table.last_created is None else "runs stored up to " + time.strftime(
            "%Y-%m-%d %H:%M UTC", time.gmtime(table.last_created)))
    out = ["<header><h1>SynaPrune lab report</h1>",
           f'<p class="meta">Database <code>{_e(table.db)}</code>: {table.total} runs'
           f'{"" if len(table.rows) == table.total else f", {len(table.rows)} shown"}. '
           f"Date: {_e(date)}. Written by: <code>{_e(command)}</code>.</p>",
           f'<p class="meta">Software that wrote this report: {_e(_versions())} (the database '
           "does not record the versions that trained the runs).</p></header>"]
    out.append('<nav><h2 id="contents">Contents</h2><ul>')
    out.append('<li><a href="#what-was-run">What was run</a></li>')
    for p in problems:
        out.append(f'<li><a href="#{p.anchor}">{_e(p.spec)}</a></li>')
    if experiments is not None:
        out.append('<li><a href="#experiments">Experiments</a></li>')
    out.append("</ul></nav>")
    out.append('<section id="what-was-run"><h2>What was run</h2>')
    if not table.rows:
        out.append('<p class="note">This database holds no runs'
                   f'{" of the problems asked for" if table.total else ""}: nothing to report. '
                   "Train some with: <code>synaprune bench --problem xor --method gd,"
                   f"synaprune-b --seeds 32 --steps 2000 --db {_e(table.db)}</code></p>")
    else:
        out.append("<table><tr><th class='l'>problem</th><th>steps</th><th>methods</th>"
                   "<th>runs</th><th class='l'>seeds</th><th class='l'>methods (label)</th>"
                   "</tr>")
        commands = []
        for p in problems:
            for budget in sorted({r["budget"] for r in p.rows}):
                runs = [r for r in p.rows if r["budget"] == budget]
                methods = sorted({r["method"] for r in runs})
                seed_sets = {m: _seed_ranges([r["seed"] for r in runs if r["method"] == m])
                             for m in methods}
                seeds = "; ".join(sorted(set(seed_sets.values())))
                out.append(f"<tr><td class='l'>{_e(p.spec)}</td><td>{budget}</td>"
                           f"<td>{len(methods)}</td><td>{len(runs)}</td><td class='l'>"
                           f"{_e(seeds)}</td><td class='l'>"
                           f"{_e(', '.join(method_label(m) for m in methods))}</td></tr>")
                for method in methods:
                    for part in seed_sets[method].split(", "):
                        lo, _, hi = part.partition("-")
                        count = int(hi or lo) - int(lo) + 1
                        commands.append(f"synaprune bench --problem '{p.spec}' --method "
                                        f"'{method}' --seed-start {lo} --seeds {count} "
                                        f"--steps {budget} --db {table.db}")
        out.append("</table>")
        # <details> needs no script: the long commands stay folded until asked for
        out.append(f"<details><summary>The {len(commands)} commands that train these runs "
                   "(full method specs, so that no tuned default can change them; the store "
                   "skips the runs it has)</summary>")
        out.append("<pre>" + _e("\n".join(commands)) + "</pre></details>")
    out.append("</section>")
    return "\n".join(out)


def write_report(db: str | Path, out: str | Path, *, problems: Sequence[str] | None = None,
                 experiments: str | Path | None = None, date: str | None = None,
                 diagnoses: int = 3, k: int = 2, lanczos_maxiter: int = 200,
                 command: str | None = None, progress: bool | None = None) -> Path:
    """Write the report of results database ``db`` into the folder ``out``.

    Args:
        db: Results database of ``synaprune bench`` (read only).
        out: The report folder; replaced atomically when the report is complete. An existing
            folder is replaced only if empty or a report (it holds :data:`MARKER`).
        problems: Problem names or full specs to keep (None: all); each must match runs.
        experiments: Folder of ``synaprune experiment`` outputs to include, or None.
        date: The date the header states; None: the newest run's time (stable across builds).
        diagnoses: Stuck runs to diagnose per problem (0: none).
        k: Hessian eigenvalues from each end in a diagnosis.
        lanczos_maxiter: Cap on a diagnosis' Hessian-vector products.
        command: The command line to state in the header (default: reconstructed).
        progress: A progress bar on standard error (None: when it is a terminal).

    Returns:
        The report's ``index.html``.

    Raises:
        UsageError: One line, for an unreadable database or one that is not the lab's, an
            unknown problem or one without runs, an experiments folder that does not exist,
            or an ``out`` that cannot be written or may not be replaced; nothing is written.
    """
    from synaprune.bench.cli import problem_filters
    from synaprune.problems import get_problem

    if diagnoses < 0:
        raise UsageError(f"--diagnoses must be >= 0, got {diagnoses}")
    out = check_destination(out)
    filters = problem_filters(problems or [])
    exp_dir = None if experiments is None else Path(experiments)
    if exp_dir is not None and not exp_dir.is_dir():
        raise UsageError(f"--experiments '{exp_dir}' is not a folder; run an experiment into "
                         f"it first: synaprune experiment NAME --quick --out {exp_dir}")
    table = load_runs(db, filters or None)
    if filters and not table.rows:
        raise UsageError(f"no runs of {', '.join(problems or [])} in {db}; it holds: "
                         f"{', '.join(load_runs(db).problems) or 'no runs'}")
    if command is None:
        command = f"synaprune report --db {db} --out {out}" + "".join(
            f" --problem {p}" for p in problems or []) + (
            f" --experiments {exp_dir}" if exp_dir is not None else "")

    found = []
    methods = {spec: len({r["method"] for r in table.rows if r["problem"] == spec})
               for spec in table.problems}
    order = sorted(table.problems, key=lambda spec: (-methods[spec], spec))  # richest first
    for i, spec in enumerate(order, start=1):
        p = _Problem(spec=spec, anchor=f"problem-{i}",
                     rows=[r for r in table.rows if r["problem"] == spec])
        try:
            prob = get_problem(spec)
            p.global_loss, p.tolerance = float(prob.global_loss), float(prob.tolerance)
            p.per_example = bool(prob.per_example)
        except (ValueError, KeyError) as exc:
            p.notes.append(f"The problem cannot be rebuilt ({exc}): its global loss is unknown "
                           "and its runs are not diagnosed.")
            p.per_example = False
        found.append(p)

    from tqdm import tqdm

    total = sum(1 + (0 if p.per_example is False else diagnoses) for p in found)
    if exp_dir is not None:
        from synaprune.experiments import EXPERIMENTS

        total += len(EXPERIMENTS)
    bar = tqdm(total=total, desc="report", unit="part", file=sys.stderr, dynamic_ncols=True,
               disable=not (sys.stderr.isatty() if progress is None else progress))
    try:
        with atomic_directory(out) as tmp:
            fig_dir = tmp / "fig"
            fig_dir.mkdir()
            sections = [_write_problem(p, table, fig_dir, diagnoses, k, lanczos_maxiter,
                                       bar.update) for p in found]
            if exp_dir is not None:
                sections.append(_experiments(exp_dir, fig_dir, bar.update))
            present = {_stats.outcome(r) for r in table.rows}
            legend = " ".join(f'<span class="sw" style="background:{c}"></span>'
                              f"{_e(outcome_label(o))}" for o, c in OUTCOME_COLORS.items()
                              if o in present)
            page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                    '<meta name="viewport" content="width=device-width, initial-scale=1">',
                    "<title>SynaPrune lab report</title>",
                    # no favicon request: a page opened from disk must not ask for anything
                    '<link rel="icon" href="data:,">',
                    f"<style>{_CSS}</style></head><body>",
                    _header(table, date, command, found, exp_dir),
                    f'<p class="meta">Outcomes: {legend}</p>' if legend else "", *sections,
                    "</body></html>", ""]
            (tmp / "index.html").write_text("\n".join(page), encoding="utf-8")
            (tmp / MARKER).write_text("written by synaprune report; this folder is replaced "
                                      "as a whole when the report is written again\n")
            for path in (tmp, fig_dir, *fig_dir.iterdir(), tmp / "index.html", tmp / MARKER):
                _umask_mode(path)
    except OSError as exc:
        raise UsageError(f"cannot write the report into '{out}': {exc}; the previous report, "
                         "if any, is unchanged") from None
    finally:
        bar.close()
    return out / "index.html"


def _umask_mode(path: Path) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would (the umask's)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
