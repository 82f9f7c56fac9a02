"""The zoo report: ``report.md`` and ``report.html`` (same content) plus ``summary.csv``.

Contents: the command, versions, machine and options; the summary table (one row per model, one
column per headline number of each task; a task a model could not do shows the reason); then one
section per task with the time each model took, the task's table (all models) and the plots.
Everything is written through `mlip.files` (temporary file + rename).
"""

from __future__ import annotations

import csv
import datetime
import html
import os
import platform
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mlip.evaluation import write_text
from mlip.files import atomic_path

VERSIONED_PACKAGES = ("mlip", "torch", "e3nn", "ase", "numpy", "tblite")
SHORT_REASON = 70  # characters of a reason shown in the summary table


def format_value(value) -> str:
    """A table cell: '-' for missing/NaN, yes/no for booleans, 3 significant digits for numbers."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "-"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def summary_columns(zoo) -> list[tuple[str, str]]:
    """(task, headline) in task order, each headline once, as the models' results name them; a
    task that no model has a headline for gets one column named by the task (for the reasons)."""
    columns = []
    for task in zoo.tasks:
        keys = [key for result in zoo.results[task].values() for key in result.summary]
        columns += [(task, key) for key in dict.fromkeys(keys)] or [(task, task)]
    return columns


def summary_rows(zoo) -> tuple[list[str], list[list[str]]]:
    columns = summary_columns(zoo)
    header = ["model", "role"] + [key for _, key in columns]
    rows = []
    for model in zoo.models:
        role = "reference (" + ", ".join(model.reference_for) + ")" if model.is_reference else model.kind
        cells = [model.name, role]
        for task, key in columns:
            result = zoo.results[task].get(model.name)
            if result is not None and key in result.summary:
                cells.append(format_value(result.summary[key]))
            elif result is not None and result.note and key == next(k for t, k in columns if t == task):
                note = result.note if len(result.note) <= SHORT_REASON else result.note[: SHORT_REASON - 3] + "..."
                cells.append(f"n/a: {note}")
            else:
                cells.append("-")
        rows.append(cells)
    return header, rows


def task_table(zoo, task: str) -> tuple[list[str], list[list[str]]]:
    """All models' rows of one task; a model whose task failed as a whole gets one row with its note."""
    keys: list[str] = []
    records = []
    for model in zoo.models:
        result = zoo.results[task].get(model.name)
        if result is None:
            continue
        rows = result.rows or [{"note": result.note or "nothing to report"}]
        for row in rows:
            record = {"model": model.name, **row}
            if result.note and not result.rows:
                record["note"] = result.note
            records.append(record)
            keys += [key for key in record if key not in keys]
    keys = [key for key in keys if key != "note"] + (["note"] if "note" in keys else [])
    return keys, [[format_value(record.get(key)) if key != "note" else record.get("note", "") for key in keys] for record in records]


def task_description(task: str) -> str:
    from mlip.zoo.runner import task_module

    doc = (task_module(task).__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def blocks(zoo, command: str) -> list[tuple]:
    """The report as ('heading', level, text) / ('text', text) / ('table', header, rows) / ('image', path) blocks."""
    context = zoo.context
    out = []
    out.append(("heading", 1, "mlip model-zoo report"))
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}"
    out.append(("text", f"Command: `{command}`" if command else "Command: (Python API)"))
    out.append(("text", f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}; machine: {machine}; "
                        f"total time {zoo.seconds:.0f} s"))
    out.append(("text", "Versions: " + ", ".join(f"{name} {version}" for name, version in versions().items())))
    out.append(("text", f"Test set: {len(context.test_structures)} structures; starting structures: "
                        f"molecules {', '.join(a.info['name'] for a in context.molecules) or 'none'}; "
                        f"crystals {', '.join(a.info['name'] for a in context.crystals) or 'none'}"))
    references = [model for model in zoo.models if model.is_reference]
    out.append(("text", "Models: " + "; ".join(
        f"{model.name} = {model.source}" + (f" (reference for {', '.join(model.reference_for)})" if model.is_reference else "")
        for model in zoo.models)))
    if not references:
        out.append(("text", "No reference model: the comparison columns are absent."))
    out.append(("heading", 2, "Summary"))
    header, rows = summary_rows(zoo)
    out.append(("table", header, rows))
    out.append(("heading", 3, "Time per task (s)"))
    out.append(("table", ["model"] + zoo.tasks, [
        [model.name] + [format_value(zoo.results[task][model.name].seconds) for task in zoo.tasks] for model in zoo.models
    ]))
    for task in zoo.tasks:
        out.append(("heading", 2, task))
        out.append(("text", task_description(task)))
        header, rows = task_table(zoo, task)
        out.append(("table", header, rows))
        for model in zoo.models:
            result = zoo.results[task][model.name]
            if result.plot_note:
                out.append(("text", f"{model.name}: {result.plot_note}"))
            for plot in result.plots:
                out.append(("image", Path(plot).name))
    out.append(("heading", 2, "Options"))
    out.append(("text", ", ".join(f"{key}={value}" for key, value in asdict(context.options).items())))
    return out


def render_markdown(report: list[tuple]) -> str:
    lines = []
    for block in report:
        if block[0] == "heading":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif block[0] == "text":
            lines += [block[1], ""]
        elif block[0] == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
            lines.append("")
        elif block[0] == "image":
            lines += [f"![{block[1]}]({block[1]})", ""]
    return "\n".join(lines)


def render_html(report: list[tuple]) -> str:
    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>mlip model-zoo report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:1em auto}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;display:block;margin:6px 0}code{background:#eee}</style></head><body>",
    ]
    for block in report:
        if block[0] == "heading":
            parts.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif block[0] == "text":
            text = html.escape(block[1])
            pieces = text.split("`")  # `code` spans
            parts.append("<p>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces)) + "</p>")
        elif block[0] == "table":
            header, rows = block[1], block[2]
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(cell)}</th>" for cell in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows]
            parts.append("</table>")
        elif block[0] == "image":
            parts.append(f"<img src='{html.escape(block[1])}' alt='{html.escape(block[1])}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(zoo, out, command: str = "") -> dict[str, Path]:
    """report.md, report.html and summary.csv in ``out``; returns their paths."""
    out = Path(out)
    report = blocks(zoo, command)
    paths = {"markdown": out / "report.md", "html": out / "report.html", "summary": out / "summary.csv"}
    write_text(render_markdown(report), paths["markdown"])
    write_text(render_html(report), paths["html"])
    header, rows = summary_rows(zoo)
    with atomic_path(paths["summary"]) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return paths
