"""Writes report blocks (headings, paragraphs, tables, images) as report.md and a self-contained report.html."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ted import artifacts

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{color:#555}"
)


def md_row(cells: Iterable[str]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [md_row(header), "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + [md_row(r) for r in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    import html

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_figure(path: Path, caption: str) -> str:
    """The PNG inlined as base64, so the page is one file."""
    import base64
    import html

    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def render(blocks: list[tuple], out: Path) -> tuple[Path, Path]:
    """Blocks ('h1'|'h2'|'p', text), ('table', header, rows), ('img', path, caption) -> report.md + report.html."""
    import html

    md, page = [], []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            md.append(("# " if kind == "h1" else "## ") + rest[0])
            page.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "p":
            md.append(rest[0])
            page.append(f"<p>{html.escape(rest[0])}</p>")
        elif kind == "table":
            md.append(_md_table(*rest))
            page.append(_html_table(*rest))
        elif kind == "img":
            path, caption = rest
            md.append(f"![{caption}]({path.relative_to(out).as_posix()})")
            page.append(_html_figure(path, caption))
    artifacts.atomic_write(out / "report.md", "\n\n".join(md) + "\n")
    artifacts.atomic_write(
        out / "report.html",
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ted "
        f"report</title><style>{STYLE}</style></head><body>{''.join(page)}</body></html>\n",
    )
    return out / "report.md", out / "report.html"
