"""Render an analysis report (the dict in analysis_report.json) as ANALYSIS_SUMMARY.md and one
self-contained report.html (figures embedded as base64, all text escaped by jinja2; in the
Markdown, names from the data are code spans or escaped, see `opcircuits.markdown`).

The sentences come from `opcircuits.report.findings` (one function per report section).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jinja2

from opcircuits import markdown
from opcircuits.files import write_text_atomic
from opcircuits.report.findings import PROBE_LABELS, findings, num, pct


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("opcircuits.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = num
    env.filters["pct"] = pct
    env.filters["code"] = markdown.code
    env.filters["name"] = markdown.name
    env.filters["cell"] = markdown.cell
    env.filters["md_escape"] = markdown.escape
    env.globals["probe_label"] = lambda p: PROBE_LABELS.get(p, p)
    return env


def render_markdown(report: dict) -> str:
    env = _env()
    env.autoescape = False
    return env.get_template("summary.md.j2").render(r=report, sections=findings(report))


def render_html(report: dict, out_dir: Path) -> str:
    figures = []
    for f in report.get("figures", []):
        data = (Path(out_dir) / f["file"]).read_bytes()
        figures.append({**f, "uri": "data:image/png;base64," + base64.b64encode(data).decode()})
    return (
        _env()
        .get_template("report.html.j2")
        .render(r=report, sections=findings(report), figures=figures)
    )


def write_reports(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ANALYSIS_SUMMARY.md and report.html (figures read from out_dir) atomically."""
    out_dir = Path(out_dir)
    md, html = out_dir / "ANALYSIS_SUMMARY.md", out_dir / "report.html"
    write_text_atomic(md, render_markdown(report))
    write_text_atomic(html, render_html(report, out_dir))
    return md, html


# --- headline: the few numbers `opcircuits run` prints at the end -------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _with_ci(value: float, entry: dict[str, Any], sign: str = "") -> str:
    text = f"{value:{sign}.3f}"
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    if _is_number(lo) and _is_number(hi):
        text += f" (95% CI {lo:{sign}.3f} to {hi:{sign}.3f})"
    return text


def headline(report: dict[str, Any]) -> list[str]:
    """The few numbers printed at the end of a run, read from analysis_report.json."""
    from opcircuits.report.findings import headline_probe

    lines: list[str] = []
    probes = [p for p in report.get("probes", []) if _is_number(p.get("accuracy"))]
    best = headline_probe({**report, "probes": probes}) if probes else None
    if best is not None:
        text = f"best probe: {best.get('probe')} on {best.get('view')}: accuracy "
        text += _with_ci(best["accuracy"], best)
        if _is_number(best.get("p_family")):
            text += f", family-wise permutation p = {best['p_family']:.3g}"
        lines.append(text)
        gain = best.get("gain_over_baseline")
        if isinstance(gain, dict) and _is_number(gain.get("value")):
            lines.append(
                f"gain over the best control ({gain.get('control')}): "
                + _with_ci(gain["value"], gain, "+")
            )
    controls = [c for c in report.get("controls", []) if _is_number(c.get("accuracy"))]
    if controls:
        top = max(controls, key=lambda c: c["accuracy"])
        lines.append(f"best control: {top.get('name')}: accuracy {_with_ci(top['accuracy'], top)}")
    cells = [c for c in report.get("token_layer_map", []) if _is_number(c.get("accuracy"))]
    if cells:
        cell = max(cells, key=lambda c: c["accuracy"])
        where = f"{cell.get('position')} @ layer {cell.get('layer')}"
        lines.append(f"best token x layer cell: {where}: {_with_ci(cell['accuracy'], cell)}")
    model = report.get("model")
    if isinstance(model, dict):
        overall = [a for a in model.get("answer_accuracy") or [] if a.get("category") == "all"]
        if overall and _is_number(overall[0].get("accuracy")):
            a = overall[0]
            lines.append(
                f"model answer accuracy: {a['accuracy']:.3f} ({a.get('correct')}/{a.get('n')})"
            )
    claims = (report.get("inference") or {}).get("claims")
    if claims is not None:
        lines.append(
            f"claims at family-wise alpha 0.05: {len(claims)}"
            + (f" ({', '.join(claims[:4])}{' …' if len(claims) > 4 else ''})" if claims else "")
        )
    return lines
