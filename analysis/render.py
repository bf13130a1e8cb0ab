"""The report's two renderings of its blocks: Markdown (`report.md`) and one self-contained HTML file
(`report.html`, images embedded, opens offline). Blocks are (kind, *args) tuples: h1, h2, p, meta, lead, ul,
table (a DataFrame), img (a file in the output folder, alt text)."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import pandas as pd


def markdown_table(df: pd.DataFrame) -> str:
    def cell(v) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def markdown(blocks) -> str:
    parts = []
    for kind, *args in blocks:
        match kind:
            case "h1":
                parts.append(f"# {args[0]}")
            case "h2":
                parts.append(f"## {args[0]}")
            case "p" | "meta":
                parts.append(args[0])
            case "lead":
                parts.append("\n>\n".join(f"> {line}" for line in args[0]))
            case "ul":
                parts.append("\n".join(f"- {item}" for item in args[0]))
            case "table":
                parts.append(markdown_table(args[0]))
            case "img":
                parts.append(f"![{args[1]}]({args[0]})")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """`code` spans verbatim (a masked password's *** is no emphasis), **bold** outside them."""
    parts = re.split(r"(`[^`]+`)", text)
    return "".join(
        f"<code>{html.escape(part[1:-1])}</code>"
        if part.startswith("`")
        else re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part))
        for part in parts
    )


CSS = """
body{font:15px/1.45 system-ui,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1b1f23;margin:0}
main{max-width:1200px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:26px;margin:0 0 6px}
h2{font-size:19px;margin:32px 0 10px;padding-bottom:4px;border-bottom:2px solid #e1e4e8}
.meta{color:#586069;font-size:13px;margin:0 0 12px}
.lead{background:#f1f8ff;border-left:4px solid #0366d6;padding:6px 16px;margin:12px 0}
.lead p{margin:6px 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0 12px;font-variant-numeric:tabular-nums}
th,td{padding:4px 9px;border-bottom:1px solid #e1e4e8;text-align:left;vertical-align:top}
th{background:#f6f8fa}
tbody tr:nth-child(even) td{background:#fafbfc}
img{max-width:100%;height:auto;display:block;margin:10px 0}
code{background:#f6f8fa;padding:1px 4px;border-radius:3px;font-size:90%}
li{margin:3px 0}
"""

# Lets a headless browser (tests/test_report_browser.py) read how many images actually decoded.
SCRIPT = """window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
  document.body.dataset.imagesLoaded = ok + "/" + imgs.length;
});"""


def html_document(blocks, out: Path, title: str) -> str:
    parts = []
    for kind, *args in blocks:
        match kind:
            case "h1" | "h2":
                parts.append(f"<{kind}>{_inline(args[0])}</{kind}>")
            case "p":
                parts.append(f"<p>{_inline(args[0])}</p>")
            case "meta":
                parts.append(f'<p class="meta">{_inline(args[0])}</p>')
            case "lead":
                parts.append('<div class="lead">' + "".join(f"<p>{_inline(x)}</p>" for x in args[0]) + "</div>")
            case "ul":
                parts.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in args[0]) + "</ul>")
            case "table":
                table = args[0].to_html(index=False, border=0, na_rep="—")
                parts.append(f'<div class="scroll">{table}</div>')
            case "img":
                data = base64.b64encode((out / args[0]).read_bytes()).decode()
                parts.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(args[1])}">')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Ablation report: {html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><main>\n{chr(10).join(parts)}\n</main><script>{SCRIPT}</script></body></html>\n"
    )
