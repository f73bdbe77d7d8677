"""``report.html``: one self-contained page (figures embedded as PNG data, no script, no
network), readable offline from its folder."""

from __future__ import annotations

import base64
from html import escape

from eigenmix.explain import figures
from eigenmix.explain.attribution import SHARE_RULE
from eigenmix.explain.view import ExplanationView

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}table{border-collapse:collapse;font-size:.8em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}code{background:#f4f4f4}
.note{font-size:.85em;color:#555}
"""


def figure(data: bytes, alt: str, caption: str) -> str:
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img class="figure" src="{src}" alt="{escape(alt)}"><figcaption>{escape(caption)}</figcaption></figure>'


def direction_table(ex: ExplanationView, part: int, n: int = 5) -> str:
    rows = []
    for r in ex.top_directions(part, n, examples=3):
        tokens = "<br>".join(f"<code>{escape(t['token'])}</code> {t['response']:+.3g} · {escape(t['context'])}" for t in r["top"])
        groups = sorted(r["mean_peak_by_group"].items(), key=lambda kv: -kv[1])[:3]
        by_group = ", ".join(f"{escape(g)} {v:.3g}" for g, v in groups)
        rows.append(f"<tr><td>{escape(figures.short(r['layer']))}</td><td>{r['index']}</td><td>{r['sigma']:.3g}</td>"
                    f"<td>{r['lambda']:.3g}</td><td>{r['share']:.3f}</td><td>{tokens}</td><td>{by_group}</td></tr>")  # fmt: skip
    names = ("layer", "#", "σ", "λ", "share", "top tokens (response · context)", "strongest groups (mean peak response)")
    head = "<tr>" + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"
    return f"<h3>{escape(ex.parts[part])}</h3><table>{head}{''.join(rows)}</table>"


def report_body(ex: ExplanationView, token_rows: int = 3) -> str:
    """The report without its page frame (what a notebook shows)."""
    top = ex.row_shares().argmax(-1)
    counts = {p: int((top == k).sum()) for k, p in enumerate(ex.parts)}
    summary = ", ".join(f"{escape(p)} {c}" for p, c in counts.items())
    parts = [
        f"<h1>eigenmix explain: {escape(ex.target)}</h1>",
        f"<p>{escape(ex.kind)} · {len(ex.parts)} parts ({escape(', '.join(ex.parts))}) · {len(ex.layers)} layers · "
        f"{len(ex.rows)} rows. Top part per input: {summary}.</p>",
        f'<p class="note">Shares: {escape(SHARE_RULE)}</p>',
        "<h2>Which part changes each layer</h2>",
        figure(figures.layer_part(ex), "layer by part shares",
               "Rows: layers; columns: parts; each cell the part's share of the layer's update over every probe token."),
        "<h2>Per input</h2>",
        figure(figures.input_part(ex), "input by part shares", "Each input's shares over every layer."),
        *(figure(figures.token_parts(ex, i), f"token shares of line {ex.rows[i].line}",
                 f"Line {ex.rows[i].line} ({ex.rows[i].group or 'no group'}), per token: each part's share of every layer's update.")
          for i in range(min(token_rows, len(ex.rows))) if i in ex.tokens),
        "<h2>Which part responds to which group of inputs</h2>",
        figure(figures.group_part(ex), "group by part shares", "Rows: groups of inputs (their 'task' field); columns: parts."),
        "<h2>Strongest directions and what they respond to</h2>",
        figure(figures.top_directions(ex), "top directions per part",
               "Each part's directions with the largest share of their layer's update."),
        *(direction_table(ex, k) for k in range(len(ex.parts))),
        "<h2>Overlap between parts, per layer</h2>",
        figure(figures.overlaps(ex), "overlap heatmaps", "Overlap of the parts' output subspaces; cross terms of the shares come from it."),
        "<h2>Spectra</h2>",
        figure(figures.spectra(ex), "spectra", "Each part's |λσ| per direction, one line per layer."),
    ]  # fmt: skip
    return "\n".join(parts)


def report_html(ex: ExplanationView) -> str:
    """The whole page."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>eigenmix explain: {escape(ex.target)}</title>'
            f"<style>{STYLE}</style></head><body>\n{report_body(ex)}\n</body></html>\n")  # fmt: skip
