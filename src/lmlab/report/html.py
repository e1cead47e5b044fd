"""report.html: one self-contained file (plots as base64 data URIs, inline CSS and JS, nothing from the network)."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

# Click a header to sort by that column (numbers numerically, empty cells last); click again to reverse.
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute("data-order") !== "asc";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-order"); });
      th.setAttribute("data-order", asc ? "asc" : "desc");
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
        if (x === "") return 1;
        if (y === "") return -1;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
td:first-child, th:first-child { text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[data-order="asc"]::after { content: " \\25B2"; }
th[data-order="desc"]::after { content: " \\25BC"; }
tr.selected td { font-weight: bold; background: #fffbe6; }
.warn { color: #a33; }
.scroll { overflow-x: auto; max-width: 100%; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
code { background: #f6f6f6; padding: 0 3px; }
"""


def fmt(v: Any) -> str:
    """A table cell: blank for None/NaN, 4 significant digits for floats."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _sort_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def table(rows: list[dict[str, Any]], columns: list[str], table_id: str, selected: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cls = ' class="selected"' if selected is not None and r.get(columns[0]) == selected else ""
        cells = "".join(
            f'<td data-v="{html.escape(_sort_value(r.get(c)))}">{html.escape(fmt(r.get(c)))}</td>' for c in columns
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    # The wide group table scrolls inside its box instead of running off the page.
    return (
        f'<div class="scroll"><table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def image(out: Path, name: str) -> str:
    data = base64.b64encode((out / name).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></figure>'


def render(
    result: dict[str, Any], out: Path, columns: list[str], power: str | None, extra: list[str] | None = None
) -> str:
    """The report page; `extra`: HTML sections placed after the tables (a compare sweep's arms)."""
    e = html.escape
    sel = result["selection"]
    better = "higher" if sel["select_mode"] == "max" else "lower"
    parts = [
        f"<h1>Sweep report: <code>{e(result['sweep_dir'])}</code></h1>",
        "<h2>Question</h2>",
        f"<p>Which configuration is best on <b>{e(result['metric'])}</b>"
        + (
            f", and how does each differ from the baseline <code>{e(result['baseline'])}</code>?"
            if result["baseline"]
            else "?"
        )
        + "</p>",
        f"<p>{result['n_jobs']} jobs: " + e(", ".join(f"{n} {s}" for s, n in result["states"].items())) + "</p>",
        "<h2>Selection</h2>",
        f"<p>Chosen on <b>{e(sel['select_metric'])}</b> ({e(sel['rule'])}, {better} is better), reported on "
        f"<b>{e(sel['report_metric'])}</b>; the test metric played no part in the choice.</p>",
        f"<p>Selected: <code>{e(sel['group'])}</code>: {e(sel['report_metric'])} {fmt(sel['report_mean'])} "
        f"(95% CI [{fmt(sel['report_ci95_low'])}, {fmt(sel['report_ci95_high'])}], n={sel['n']}). "
        f"{e(sel.get('support', ''))}</p>",
        *[f'<p class="warn">{e(f)}</p>' for f in sel["flags"]],
        f"<h2>{e(result['metric'])} per group</h2>",
        table(result["groups"], columns, "groups", sel["group"]),
    ]
    if power:
        parts += ["<h2>Power</h2>", f'<p id="power">{e(power.replace("`", ""))}</p>']
    for i, (m, rows) in enumerate(result.get("extra_metrics", {}).items()):
        parts += [f"<h2>{e(m)} per group</h2>", table(rows, columns, f"metric{i + 1}", sel["group"])]
    em = result.get("expected_max")
    if em:
        rows = [
            {
                "n": n,
                "runs": n * em["runs_per_config"],
                "expected (Dodge)": a,
                "std (Dodge)": b,
                "expected (unbiased)": c,
                "std (unbiased)": d,
            }
            for n, a, b, c, d in zip(
                em["n"], em["expected"], em["std"], em["expected_unbiased"], em["std_unbiased"], strict=True
            )
        ]
        parts += ["<h2>Expected best validation score</h2>", table(rows, list(rows[0]), "expected_max")]
    parts += extra or []
    pb = result.get("paired_bootstrap")
    if pb:
        parts += ["<h2>Bootstrap over test examples</h2>", f"<pre>{e(json.dumps(pb, indent=2, default=str))}</pre>"]
    if result["plots"]:
        parts += ["<h2>Plots</h2>"] + [image(out, p) for p in result["plots"]]
    prov = result.get("provenance") or {}
    parts += [
        "<h2>Provenance</h2><ul>",
        f"<li>git commits: {e(', '.join(prov.get('git.commit') or ['(none recorded)']))}</li>",
        f"<li>data fingerprints: {e(', '.join(prov.get('data.fingerprint') or ['(none recorded)']))}</li>",
        f"<li>not finished: {e(', '.join(prov.get('not_finished') or []) or 'none')}</li></ul>",
    ]
    if result["warnings"]:
        parts += ["<h2>Warnings</h2><ul>"] + [f'<li class="warn">{e(w)}</li>' for w in result["warnings"]] + ["</ul>"]
    if result["notes"]:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{e(n)}</li>" for n in result["notes"]] + ["</ul>"]
    return page(result["sweep_dir"], parts)


def page(title: str, parts: list[str]) -> str:
    """One self-contained page around `parts` (HTML snippets): inline CSS and the table-sorting script."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>lmlab report: {html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(parts)
        + f"\n<script>{SORT_JS}</script>\n</body></html>\n"
    )


def md_text(text: str) -> str:
    """A markdown sentence of the report as HTML: escaped, `code` and **bold** kept."""
    import re

    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*([^*]*)\*\*", r"<b>\1</b>", text)
