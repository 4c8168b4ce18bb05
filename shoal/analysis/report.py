"""A self-contained HTML report: headings, paragraphs, HTML tables and base64-embedded PNGs."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from shoal.core.fileio import write_text_atomic

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #1f77b4; padding-bottom: .2em; }
h2 { margin-top: 1.8em; color: #1f4e79; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: right; }
th { background: #f0f4f8; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
img { max-width: 100%; border: 1px solid #eee; margin: .4em 0; }
.note { color: #555; font-style: italic; }
.significant { color: #1a7f37; font-weight: bold; }
.not-significant { color: #9a6700; font-weight: bold; }
"""


class Report:
    """Accumulates sections, then renders one HTML page with everything embedded."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, css_class: str = "") -> None:
        attr = f' class="{css_class}"' if css_class else ""
        self.parts.append(f"<p{attr}>{html.escape(text)}</p>")

    def verdict(self, text: str, significant: bool) -> None:
        self.paragraph(text, "significant" if significant else "not-significant")

    def table(self, frame: pd.DataFrame, index: bool = False) -> None:
        if frame.empty:
            self.paragraph("(empty)", "note")
            return
        self.parts.append(frame.to_html(index=index, border=0, na_rep="-", float_format=lambda v: f"{v:.4g}"))

    def image(self, path: str | Path, alt: str = "") -> None:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n"
            f"<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.render())
