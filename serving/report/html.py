"""report.html: the report as one self-contained page (styles, script and plots inline; nothing fetched).

The verdict comes first. Tables scroll sideways on a narrow screen and sort by a column when its
header is clicked, on the number behind each cell (``data-value``); without script the page
reads the same, unsorted. A content security policy forbids every network request.
"""

from __future__ import annotations

import base64
import json
from html import escape

from serving.report.document import Document, Entry, Note, Table

POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 0 1rem 2rem; color: #1b1b1b; }
h1 { font-size: 1.5rem; margin: 1rem 0 .5rem; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; }
#verdict { background: #eef6ee; border-left: .3rem solid #2e7d32; padding: .5rem 1rem; }
#verdict p { margin: .25rem 0; font-size: 1.1rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border-bottom: 1px solid #ddd; padding: .25rem .5rem; text-align: left; white-space: nowrap; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
th button { all: unset; cursor: pointer; font-weight: 600; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; }
code { overflow-wrap: anywhere; }
"""

# Sorts a table's rows by the clicked column's data-value: numbers as numbers, text as text, empty cells last.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.querySelector("button").addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (other) { other.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var raw = row.cells[column].getAttribute("data-value");
        if (raw === null || raw === "") return null;
        var number = Number(raw);
        return isNaN(number) ? raw : number;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);
        var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _note(note: Note) -> str:
    code = f"<code>{escape(note.code)}</code>" if note.code else ""
    return f"{escape(note.text)}{code}"


def _cell(entry: Entry) -> str:
    if entry.value is None:
        return f"<td>{escape(entry.text)}</td>"
    number = isinstance(entry.value, (int, float)) and not isinstance(entry.value, bool)
    value = json.dumps(entry.value) if number else entry.value
    return f'<td{" class=number" if number else ""} data-value="{escape(str(value))}">{escape(entry.text)}</td>'


def _table(table: Table) -> list[str]:
    parts = [f'<section id="{table.key}">', f"<h2>{escape(table.title)}</h2>"]
    parts += [f"<p>{_note(note)}</p>" for note in table.intro]
    parts += ['<div class="scroll">', f'<table class="sortable" id="table-{table.key}">', "<thead><tr>"]
    parts += [f'<th scope="col"><button type="button">{escape(h)}</button></th>' for h in table.headers]
    parts += ["</tr></thead>", "<tbody>"]
    parts += ["<tr>" + "".join(_cell(entry) for entry in row) + "</tr>" for row in table.rows]
    parts += ["</tbody>", "</table>", "</div>"]
    parts += [f"<p>{_note(note)}</p>" for note in table.notes]
    return parts + ["</section>"]


def render_html(document: Document, images: dict[str, bytes]) -> str:
    """Returns report.html: the document with ``images`` ({plot file name: PNG bytes}) inline, in the document's
    plot order; a plot without bytes is left out."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        f"<title>{escape(document.title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(document.title)}</h1>",
        '<section id="verdict">',
        f"<p><strong>Verdict:</strong> {escape(document.verdict)}</p>",
        "</section>",
        '<ul id="candidates">',
    ]
    parts += [f"<li><strong>{escape(name)}</strong> {escape(text)}</li>" for name, text in document.candidates]
    parts += ["</ul>", f'<p id="method">{escape(document.method)}</p>']
    for table in document.tables:
        parts += _table(table)
    parts += ['<section id="plots">', "<h2>Plots</h2>"]
    for name in document.plots:
        if name in images:
            data = base64.b64encode(images[name]).decode("ascii")
            caption = escape(name.removesuffix(".png").replace("_", " "))
            parts.append(
                f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
    parts += ["</section>", '<section id="signature">', "<h2>Signature</h2>", "<ul>"]
    parts += [f"<li>{_note(note)}</li>" for note in document.signature]
    parts += ["</ul>", "</section>", f"<script>{SCRIPT}</script>", "</body>", "</html>", ""]
    return "\n".join(parts)
