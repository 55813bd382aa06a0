"""The report document as one self-contained HTML page and as Markdown. Every string that came
from data or configuration goes through html.escape here; the only markup not built here is the
figures' (report.figures escapes the text it puts in them). The page's Content-Security-Policy
allows no network and runs only the one inline script below (by its hash), so markup that slipped
through could neither fetch nor execute.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

from speechprune.report.document import Figure, Missing, Section, Table

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em} caption{caption-side:bottom;text-align:left;font-size:.9em;color:#555;padding-top:.2em} td,th{border:1px solid #ccc;padding:.2em .5em;
text-align:left;vertical-align:top} th{background:#f3f3f3} figure{margin:1em 0} figcaption{font-size:.9em;color:#444}
code{background:#f3f3f3;padding:0 .2em;word-break:break-all} .missing{color:#8a5a00}
.pair{display:flex;flex-wrap:wrap;gap:1.5em} .svg-title{font-size:12px} .tick{font-size:10px} .axis{font-size:11px}
svg.heatmap rect:hover{stroke:#000;stroke-width:2} .readout{font-family:monospace;font-size:.9em;min-height:1.2em}
#hover{position:fixed;pointer-events:none;background:#fff;border:1px solid #888;padding:2px 5px;font:12px monospace;
display:none}
"""

# Hovering a heatmap cell shows its l, n and distance (from the cell's data-* attributes, as text).
SCRIPT = """
(function () {
  var tip = document.getElementById('hover');
  document.querySelectorAll('svg.heatmap rect[data-l]').forEach(function (cell) {
    cell.addEventListener('mousemove', function (event) {
      var l = Number(cell.dataset.l), n = Number(cell.dataset.n);
      var text = 'l=' + l + ', n=' + n + ', block [' + l + ',' + (l + n) + '), distance ' + cell.dataset.d;
      tip.textContent = text;
      tip.style.display = 'block';
      tip.style.left = (event.clientX + 12) + 'px';
      tip.style.top = (event.clientY + 12) + 'px';
      var figure = cell.closest('figure');
      var readout = figure && figure.querySelector('.readout');
      if (readout) { readout.textContent = text; }
    });
    cell.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  });
})();
"""


def _script_hash() -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    caption = f'<caption>{escape(table.note)}</caption>' if table.note else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_block(block) -> str:
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        return (f"<figure>{block.html}<figcaption>{escape(block.says)}<br>Made by: "
                f"<code>{escape(block.command)}</code></figcaption></figure>")
    if isinstance(block, Missing):
        return f'<p class="missing">Not in this run: {escape(block.text)}</p>'
    return f"<p>{escape(str(block))}</p>"


def html(sections: list[Section], title: str) -> str:
    policy = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src '{_script_hash()}'; "
              "base-uri 'none'; form-action 'none'")
    body = "".join(f"<section><h2>{escape(s.title)}</h2>{''.join(_html_block(b) for b in s.blocks)}</section>"
                   for s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1>{body}<div id=\"hover\"></div><script>{SCRIPT}</script></body></html>\n")


def _md_cell(text: str) -> str:
    # < > & escaped so that no tag can form; quotes need no escaping outside a tag and stay readable
    return escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_block(block) -> str:
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_md_cell(h) for h in block.headers) + " |",
                 "|" + "---|" * len(block.headers)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        if block.note:
            lines += ["", f"*{_md_cell(block.note)}*"]
        return "\n".join(lines)
    if isinstance(block, Figure):
        return f"*Figure (in the HTML report):* {_md_cell(block.says)} Made by: {_md_cell(block.command)}"
    if isinstance(block, Missing):
        return f"*Not in this run:* {_md_cell(block.text)}"
    return _md_cell(str(block))


def markdown(sections: list[Section], title: str) -> str:
    parts = [f"# {_md_cell(title)}"]
    for section in sections:
        parts.append(f"## {_md_cell(section.title)}")
        parts += [_md_block(b) for b in section.blocks]
    return "\n\n".join(parts) + "\n"
