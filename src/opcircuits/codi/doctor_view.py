"""The screen `opcircuits doctor` prints: a report of `codi/doctor.py` drawn with rich. Findings
are printed unwrapped, one a line, so a pasted report keeps every tensor name whole."""

from __future__ import annotations

from typing import Any

HASH_SHOWN = 16  # hex digits of each sha256 on screen (the JSON holds all 64)


def _keys(name: str, facts: dict[str, Any]) -> str:
    first = ", ".join(facts["first"])
    more = (
        f", … ({facts['count'] - len(facts['first'])} more)"
        if facts["count"] > len(facts["first"])
        else ""
    )
    return f"  {name}: {facts['count']}" + (f" ({first}{more})" if facts["count"] else "")


def _files_table(files: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="files read", title_justify="left", box=None, pad_edge=False)
    for name, justify in (
        ("folder", "left"),
        ("file", "left"),
        ("bytes", "right"),
        ("sha256", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in files:
        table.add_row(f["folder"], f["name"], f"{f['bytes']:,}", f["sha256"][:HASH_SHOWN] + "…")
    return table


def _config_table(config: dict[str, dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="CODI config", title_justify="left", box=None, pad_edge=False)
    for name in ("setting", "value", "from"):
        table.add_column(name)
    for key, entry in config.items():
        table.add_row(key, str(entry["value"]), entry["from"])
    return table


def lines(report: dict[str, Any]) -> list[str]:
    """The plain lines of the report (where, weights, keys, vocabulary, versions)."""
    out = [f"opcircuits doctor: {report['model']}"]
    where = report.get("where")
    if where:
        out += [
            f"  checkpoint: {where['checkpoint']} → {where['checkpoint_dir']}",
            f"  weights:    {where['weights']}",
            f"  base:       {where['base']} → {where['base_dir']}",
        ]
    weights = report.get("weights")
    if weights:
        dtypes = ", ".join(f"{d} ×{n}" for d, n in weights["dtypes"].items())
        out.append(f"weights: {weights['tensors']} tensors in the checkpoint ({dtypes})")
    load = report.get("load")
    if load and load["loaded"]:
        out.append(
            f"loaded: {load['parameters']:,} parameters as {report['dtype']} on {load['device']}"
        )
    keys = report.get("keys")
    if keys:
        out += [
            _keys("from the checkpoint", keys["from_checkpoint"]),
            _keys("from the base", keys["from_base"]),
            _keys("ignored (deterministic buffers)", keys["ignored_buffers"]),
        ]
        if keys["unknown"]["count"]:
            out.append(_keys("matching nothing in the module", keys["unknown"]))
        head, vocab = keys["head"], keys["vocab"]
        ties = "ties" if head["base_ties"] else "unties"
        out.append(f"LM head: {head['head']} (the base {ties} it to {head['embedding']})")
        rows = vocab["head_rows"]
        head_rows = "the embedding's (tied)" if rows is None and head["base_ties"] else rows
        out.append(
            f"vocabulary: base vocab_size {vocab['base_config']} (+3 CODI ids), embedding rows "
            f"{vocab['embedding_rows']}, head rows {head_rows}, tokenizer "
            f"{vocab.get('tokenizer')}"
        )
    versions = report["versions"]
    out.append(
        "versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform")
        + f" ({versions.get('platform')})"
    )
    return out


def render(report: dict[str, Any], console: Any = None) -> None:
    """Print the report: facts, files, config, then every finding (or that there is none)."""
    from rich.console import Console

    console = console or Console()
    head, *rest = lines(report)
    console.print(head, style="bold", soft_wrap=True, highlight=False)
    for line in rest[:3] if report.get("where") else []:
        console.print(line, soft_wrap=True, highlight=False)
    if report.get("files"):
        console.print(_files_table(report["files"]))
    if report.get("config"):
        console.print(_config_table(report["config"]))
    for line in rest[3:] if report.get("where") else rest:
        console.print(line, soft_wrap=True, highlight=False)
    found = report["suspicious"]
    if not found:
        console.print("nothing suspicious (exit code 0)", style="green", highlight=False)
        return
    console.print(f"suspicious: {len(found)} (exit code 1)", style="bold red", highlight=False)
    for item in found:
        console.print(f"  ✗ {item['kind']}: {item['message']}", soft_wrap=True, highlight=False)
