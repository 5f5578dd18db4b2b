"""Result tables rendered from committed records (`results/<name>.json`).

Every figure in a result table of README.md or docs/*.md comes from a record: a JSON file that
holds how the figures were measured (the command, the commit, the date, the machine, the data
split) and the figures themselves, one row per model or setting. A document asks for a table
with a pair of marker comments, and this module writes the table (and a line naming its
records) between them:

    <!-- results:NAME -->            a record's table "main"
    <!-- results:NAME:TABLE -->      another of its tables
    ...                              (written here)
    <!-- /results:NAME:TABLE -->

and for a single figure in running text, on one line:

    <!-- value:NAME/ROW/KEY -->0.495<!-- /value -->

    python -m captioner.app.results            # rewrite every marked table and value
    python -m captioner.app.results --check    # exit 1 naming each one that disagrees

A record:

    {"name": "<file stem>", "title": ..., "command": str or [str], "commit": "<hash>",
     "date": "YYYY-MM-DD", "machine": ..., "host": its short name, "split": ..., "source": where the figures were
     first published, "notes": [...], optional "ranges": {...},
     "formats": {"<key>": {"format": "{:.1f}", "scale": 100}},
     "rows": [{"id", "label", "metrics": {"<key>": value}, optional "formats" (this row's
               own), "commit", "date", "machine", "host", "command", "split" (this row's provenance)}],
     "tables": {"main": {"label": first column header, "columns": [{"key", "label",
                "format", "scale", "override"}], "rows": ["<row id>" | {"row" | "ref": "<record>/<row>",
                "label", "bold": true | [keys, "label"]}]}}}

A metric value is a number, a string (shown as it is), null (an empty cell), a list (shown
comma-separated), or {"min", "max"[, "mean"]} (shown "min-max", or once when both show the
same, or "mean (min-max)"). Keys of
nested metrics are dotted ("coco.cider"). A number is shown as `format.format(value * scale)`
(format "{}" and scale 1 unless the column or the record says otherwise).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.runtime.io import atomic_path, read_json

__all__ = [
    "PROVENANCE", "RECORDS_DIR", "Mismatch", "RecordError", "check_docs", "doc_paths", "find_row", "format_value",
    "load_records", "main", "render_doc", "render_table", "render_value", "validate_record", "write_docs",
]

RECORDS_DIR = "results"
PROVENANCE: tuple[str, ...] = ("command", "commit", "date", "machine", "split")  # every record names them
TABLE_OPEN = re.compile(r"^<!-- results:(?P<name>[A-Za-z0-9_.-]+)(?::(?P<table>[A-Za-z0-9_.-]+))? -->$")
TABLE_CLOSE = re.compile(r"^<!-- /results:[A-Za-z0-9_.:-]+ -->$")
VALUE = re.compile(
    r"<!-- value:(?P<name>[A-Za-z0-9_.-]+)/(?P<row>[A-Za-z0-9_.-]+)/(?P<key>[A-Za-z0-9_.]+) -->"
    r"(?P<text>.*?)<!-- /value -->"
)
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


class RecordError(ValueError):
    """A record that is malformed, or a marker that names no record, table, row or key."""


@dataclass(frozen=True)
class Mismatch:
    """A marked table or value whose text is not what its record renders."""

    doc: str
    line: int
    marker: str
    found: str
    expected: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.marker} differs from its record"

    def first_difference(self) -> tuple[int, str, str]:
        """(line in the document, found, expected) of the first line that differs."""
        found, expected = self.found.split("\n"), self.expected.split("\n")
        for i in range(max(len(found), len(expected))):
            f = found[i] if i < len(found) else "<missing>"
            e = expected[i] if i < len(expected) else "<missing>"
            if f != e:
                return self.line + (i + 1 if self.marker.startswith("results:") else 0), f, e
        return self.line, "", ""


def doc_paths(root: Path) -> list[Path]:
    """The documents that may hold marked tables: README.md and docs/*.md."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def validate_record(record: Mapping[str, Any], stem: str) -> None:
    """Raise RecordError naming the first problem of a record read from `<stem>.json`."""
    where = f"{RECORDS_DIR}/{stem}.json"
    if record.get("name") != stem:
        raise RecordError(f"{where}: 'name' must be {stem!r}, the file's stem")
    for key in ("title", *PROVENANCE):
        value = record.get(key)
        if not value or not (isinstance(value, str) or (key == "command" and _strings(value))):
            raise RecordError(f"{where}: '{key}' is missing or empty")
    for key, pattern in (("date", DATE), ("commit", COMMIT)):
        if not pattern.match(record[key]):
            kind = "YYYY-MM-DD date" if key == "date" else "commit hash"
            raise RecordError(f"{where}: '{key}' {record[key]!r} is not a {kind}")
    rows = record.get("rows")
    if not isinstance(rows, list) or not rows:
        raise RecordError(f"{where}: 'rows' must be a non-empty list")
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not row.get("id") or not isinstance(row.get("metrics"), dict) \
                or not row["metrics"]:
            raise RecordError(f"{where}: rows[{i}] needs an 'id' and non-empty 'metrics'")
        if row["id"] in seen:
            raise RecordError(f"{where}: row id {row['id']!r} appears twice")
        seen.add(row["id"])
        for key in ("date", "commit"):
            if key in row and not (DATE if key == "date" else COMMIT).match(row[key]):
                raise RecordError(f"{where}: rows[{i}] '{key}' {row[key]!r} is malformed")
    tables = record.get("tables", {})
    if not isinstance(tables, dict):
        raise RecordError(f"{where}: 'tables' must be an object")
    for tname, table in tables.items():
        if not isinstance(table, dict) or not table.get("columns") or not table.get("rows"):
            raise RecordError(f"{where}: table {tname!r} needs 'columns' and 'rows'")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def load_records(root: Path) -> dict[str, dict[str, Any]]:
    """Every record under `root`/results, by name, validated."""
    records = {}
    for path in sorted((Path(root) / RECORDS_DIR).glob("*.json")):
        record = read_json(path)
        if not isinstance(record, dict):
            raise RecordError(f"{RECORDS_DIR}/{path.name}: not a JSON object")
        validate_record(record, path.stem)
        records[path.stem] = record
    return records


def _flat(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and not ({"min", "max"} <= value.keys()):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def find_row(records: Mapping[str, Mapping[str, Any]], ref: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(record, row) for "<record>/<row id>"."""
    name, _, row_id = ref.partition("/")
    if name not in records:
        raise RecordError(f"no record {name!r} (results/{name}.json)")
    for row in records[name]["rows"]:
        if row["id"] == row_id:
            return records[name], row
    raise RecordError(f"record {name!r} has no row {row_id!r}")


def _number(value: float, fmt: str, scale: float) -> str:
    scaled = value * scale
    if scale != 1 and isinstance(scaled, float):
        scaled = round(scaled, 9)  # 0.626 * 100 is 62.60000000000001: format the intended value
    return fmt.format(scaled)


def format_value(value: Any, fmt: str = "{}", scale: float = 1) -> str:
    """One cell's text (see the module docstring for the kinds of value)."""
    if value is None:
        return ""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, (int, float)):
        return _number(value, fmt, scale)
    if isinstance(value, list):
        return ", ".join(format_value(v, fmt, scale) for v in value)
    if isinstance(value, dict) and {"min", "max"} <= value.keys():
        low, high = format_value(value["min"], fmt, scale), format_value(value["max"], fmt, scale)
        span = low if low == high else f"{low}-{high}"
        return f"{format_value(value['mean'], fmt, scale)} ({span})" if "mean" in value else span
    raise RecordError(f"cannot show {value!r}")


def _style(record: Mapping[str, Any], column: Mapping[str, Any],
           row: Mapping[str, Any] | None = None) -> tuple[str, float]:
    """(format, scale) of a key: the row's own, else the column's, else the record's, else plain;
    a column with "override" imposes its own on every row (a summary table's presentation)."""
    own = {k: v for k, v in column.items() if k in ("format", "scale")}
    base = {**record.get("formats", {}).get(column["key"], {}), **own,
            **(row or {}).get("formats", {}).get(column["key"], {}), **(own if column.get("override") else {})}
    return base.get("format", "{}"), base.get("scale", 1)


def _cell(text: str, bold: bool) -> str:
    return f"**{text}**" if bold and text else text


def _provenance(record: Mapping[str, Any], row: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(record, date, commit, host) of a row: its own where it says, else its record's; the host
    is the short name of the machine ("host"), else the machine up to its first ";" or ","."""
    host = row.get("host") or (None if "machine" in row else record.get("host"))
    if host is None:
        host = re.split(r"[;,]", row.get("machine", record["machine"]))[0]
    return (record["name"], row.get("date", record["date"]), row.get("commit", record["commit"]), host)


def render_table(records: Mapping[str, Mapping[str, Any]], name: str, table: str = "main",
                 link_prefix: str = "") -> str:
    """The markdown table `table` of record `name`, then one line naming its records
    (with `link_prefix` + results/<name>.json as link targets)."""
    if name not in records:
        raise RecordError(f"no record {name!r} (results/{name}.json)")
    record = records[name]
    spec = record.get("tables", {}).get(table)
    if spec is None:
        raise RecordError(f"record {name!r} has no table {table!r}")
    columns = spec["columns"]
    lines = ["| " + " | ".join([spec.get("label", ""), *(c["label"] for c in columns)]) + " |",
             "|" + "---|" * (len(columns) + 1)]
    sources: list[tuple[str, str, str, str]] = []
    for entry in spec["rows"]:
        entry = {"row": entry} if isinstance(entry, str) else entry
        if "ref" in entry:
            owner, row = find_row(records, entry["ref"])
        else:
            owner, row = find_row(records, f"{name}/{entry['row']}")
        metrics = _flat(row["metrics"])
        bold = entry.get("bold", False)
        label = entry.get("label", row.get("label", row["id"]))
        cells = [_cell(label, bold is True or (isinstance(bold, list) and "label" in bold))]
        for column in columns:
            if column["key"] not in metrics and not column.get("optional", True):
                raise RecordError(f"{owner['name']}/{row['id']} has no {column['key']!r}")
            fmt, scale = _style(owner, column, row)
            text = format_value(metrics.get(column["key"]), fmt, scale)
            cells.append(_cell(text, bold is True or (isinstance(bold, list) and column["key"] in bold)))
        lines.append("| " + " | ".join(cells) + " |")
        if (src := _provenance(owner, row)) not in sources:
            sources.append(src)
    names: list[str] = []
    for src in sources:
        if src[0] not in names:
            names.append(src[0])
    parts = []
    for rec in names:
        runs = "; ".join(f"{d}, {c}, {m}" for n, d, c, m in sources if n == rec)
        parts.append(f"[`results/{rec}.json`]({link_prefix}results/{rec}.json) ({runs})")
    lines += ["", "Record" + ("s" if len(parts) > 1 else "") + ": " + "; ".join(parts) + "."]
    return "\n".join(lines)


def render_value(records: Mapping[str, Mapping[str, Any]], ref: str) -> str:
    """One figure, "<record>/<row>/<key>", formatted as the record's formats say."""
    row_ref, _, key = ref.rpartition("/")
    record, row = find_row(records, row_ref)
    metrics = _flat(row["metrics"])
    if key not in metrics:
        raise RecordError(f"{row_ref} has no {key!r}")
    fmt, scale = _style(record, {"key": key}, row)
    return format_value(metrics[key], fmt, scale)


def _link_prefix(doc: Path, root: Path) -> str:
    rel = os.path.relpath(root, doc.parent)
    return "" if rel == "." else f"{Path(rel).as_posix()}/"


def render_doc(text: str, records: Mapping[str, Mapping[str, Any]], link_prefix: str = "",
               doc: str = "doc") -> tuple[str, list[Mismatch]]:
    """`text` with every marked table and value rendered, and what differed before."""
    lines = text.split("\n")
    out: list[str] = []
    mismatches: list[Mismatch] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        opened = TABLE_OPEN.match(line.strip())
        if opened:
            name, table = opened["name"], opened["table"] or "main"
            marker = f"results:{name}" + (f":{table}" if opened["table"] else "")
            close = f"<!-- /{marker} -->"
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == close), None)
            if end is None:
                raise RecordError(f"{doc}:{i + 1}: {line.strip()} has no closing {close}")
            found = "\n".join(lines[i + 1:end])
            expected = render_table(records, name, table, link_prefix)
            if found != expected:
                mismatches.append(Mismatch(doc, i + 1, marker, found, expected))
            out += [line, *expected.split("\n"), lines[end]]
            i = end + 1
            continue
        if TABLE_CLOSE.match(line.strip()):
            raise RecordError(f"{doc}:{i + 1}: {line.strip()} closes no open table")

        def fill(m: re.Match[str], lineno: int = i + 1) -> str:
            ref = f"{m['name']}/{m['row']}/{m['key']}"
            expected = render_value(records, ref)
            if m["text"] != expected:
                mismatches.append(Mismatch(doc, lineno, f"value:{ref}", m["text"], expected))
            return f"<!-- value:{ref} -->{expected}<!-- /value -->"

        out.append(VALUE.sub(fill, line))
        i += 1
    return "\n".join(out), mismatches


def _docs(root: Path, docs: Iterable[Path] | None) -> list[Path]:
    return list(docs) if docs is not None else doc_paths(root)


def check_docs(root: Path, docs: Iterable[Path] | None = None) -> list[Mismatch]:
    """Every marked table or value in the documents that disagrees with its record."""
    root = Path(root)
    records = load_records(root)
    found = []
    for doc in _docs(root, docs):
        rel = doc.relative_to(root).as_posix() if doc.is_relative_to(root) else str(doc)
        _, mismatches = render_doc(doc.read_text(encoding="utf-8"), records, _link_prefix(doc, root), rel)
        found += mismatches
    return found


def write_docs(root: Path, docs: Iterable[Path] | None = None) -> list[Path]:
    """Render every marked table and value in place; the documents that changed."""
    root = Path(root)
    records = load_records(root)
    changed = []
    for doc in _docs(root, docs):
        text = doc.read_text(encoding="utf-8")
        rel = doc.relative_to(root).as_posix() if doc.is_relative_to(root) else str(doc)
        new, mismatches = render_doc(text, records, _link_prefix(doc, root), rel)
        if mismatches:
            with atomic_path(doc) as tmp:
                tmp.write_text(new, encoding="utf-8")
            changed.append(doc)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m captioner.app.results", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 when a marked table or value disagrees with its record")
    ap.add_argument("--root", type=Path, default=Path.cwd(), help="the project folder (default: the current one)")
    args = ap.parse_args(argv)
    try:
        if args.check:
            mismatches = check_docs(args.root)
            for m in mismatches:
                line, found, expected = m.first_difference()
                print(f"{m}\n  line {line}: {found}\n  record:  {expected}", file=sys.stderr)
            if mismatches:
                print(f"{len(mismatches)} figure(s) disagree with results/*.json: run "
                      "`python -m captioner.app.results` to rewrite them from the records", file=sys.stderr)
                return 1
            print(f"results: every marked table and value agrees with {RECORDS_DIR}/*.json")
            return 0
        for doc in write_docs(args.root):
            print(f"results: rewrote {doc.relative_to(args.root) if doc.is_relative_to(args.root) else doc}")
        return 0
    except (RecordError, OSError) as e:
        print(f"results: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
