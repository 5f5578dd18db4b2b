"""Figures in README.md and docs/*.md against their records (results/*.json), and the records
against the committed metrics they summarise. `python -m captioner.app.results` rewrites the
marked tables from the records; these tests fail when a figure was edited by hand, a record
changed without a rewrite, or metrics/eval.json left the range measured across CPUs."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.app import results
from captioner.app.results import check_docs, doc_paths, find_row, load_records, main, render_doc

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def records() -> dict:
    return load_records(REPO)


def test_every_marked_figure_agrees_with_its_record() -> None:
    mismatches = check_docs(REPO)
    lines = [f"{m}\n  line {d[0]}: {d[1]}\n  record:  {d[2]}" for m in mismatches for d in [m.first_difference()]]
    assert not mismatches, "\n".join(lines) + \
        "\n(rewrite with `python -m captioner.app.results`, after fixing the record if the record is wrong)"


def test_every_record_is_used_by_a_document(records: dict) -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in doc_paths(REPO))
    used = set(re.findall(r"<!-- (?:results|value):([A-Za-z0-9_.-]+)", text))
    used |= {e["ref"].split("/")[0] for r in records.values() for t in r.get("tables", {}).values()
             for e in t["rows"] if isinstance(e, dict) and "ref" in e}
    assert set(records) <= used, sorted(set(records) - used)


def test_records_name_real_commits(records: dict) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    commits = {r["commit"] for r in records.values()} | {row["commit"] for r in records.values()
                                                         for row in r["rows"] if "commit" in row}
    missing = [c for c in sorted(commits) if subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=REPO,
                                                            capture_output=True).returncode != 0]
    assert not missing, f"records name commits git does not know: {missing}"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not {"min", "max"} <= v.keys():
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_committed_embedded_metrics_lie_in_the_range_measured_across_cpus(records: dict) -> None:
    """The embedded data set's model figures depend on the CPU (oneDNN kernels): the record holds
    make repro's figures on an AMD EPYC and on an Intel Xeon with the same code, and
    metrics/eval.json must lie in exactly that range. The human ceiling and the blind baseline
    involve no model: equal to the record."""
    record = records["embedded-dev"]
    rows = {row["id"]: _flat(row["metrics"]) for row in record["rows"]}
    span = rows[record["ranges"]["cpu"]]
    for key, bounds in span.items():  # the range is exactly the two machines' figures
        assert bounds == {"min": min(rows["model"][key], rows["model-amd"][key]),
                          "max": max(rows["model"][key], rows["model-amd"][key])}, key
    assert span["bleu4"] == {"min": 0.7146, "max": 0.7394}
    committed = json.loads((REPO / "metrics/eval.json").read_text())
    model = _flat({k: committed[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4", "coco", "diversity")})
    assert span.keys() <= model.keys(), sorted(span.keys() - model.keys())
    outside = {k: model[k] for k in span if not span[k]["min"] <= model[k] <= span[k]["max"]}
    assert not outside, f"metrics/eval.json outside the range measured across CPUs: {outside}"
    assert _flat(committed["human"]) == rows["human"]
    assert _flat(committed["blind_baseline"]) == rows["blind"]


def test_bench_records_hold_metrics_bench_json(records: dict) -> None:
    bench = json.loads((REPO / "metrics/bench.json").read_text())
    checked = 0
    for record in records.values():
        for row in record["rows"]:
            if row["id"] in bench and "value" in row["metrics"]:
                assert row["metrics"]["value"] == bench[row["id"]], f"{record['name']}/{row['id']}"
                checked += 1
    assert checked >= 40


def _copy_docs(tmp_path: Path) -> Path:
    for name in ("README.md", "docs", "results"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def test_a_changed_figure_fails_the_check(tmp_path: Path) -> None:
    """Break one figure of a rendered table, and one inline figure: both are caught, by line."""
    root = _copy_docs(tmp_path)
    doc = root / "docs/RESULTS.md"
    text = doc.read_text(encoding="utf-8")
    table = re.search(r"<!-- results:embedded-dev -->\n(.*?)<!-- /results:embedded-dev -->", text, re.S)
    assert table, "docs/RESULTS.md shows the embedded data set's table"
    broken = table.group(1).replace("| 0.739 |", "| 0.749 |", 1)
    assert broken != table.group(1)
    doc.write_text(text.replace(table.group(1), broken), encoding="utf-8")
    found = check_docs(root)
    assert [(m.doc, m.marker) for m in found] == [("docs/RESULTS.md", "results:embedded-dev")]
    assert found[0].line == text[:table.start()].count("\n") + 1
    assert main(["--check", "--root", str(root)]) == 1
    assert main(["--root", str(root)]) == 0  # rewrites it from the record
    assert doc.read_text(encoding="utf-8") == text and check_docs(root) == []

    readme = root / "README.md"
    value = re.search(r"<!-- value:([^ ]+) -->(.*?)<!-- /value -->", readme.read_text(encoding="utf-8"))
    assert value, "README.md quotes at least one figure from a record"
    readme.write_text(readme.read_text(encoding="utf-8").replace(value.group(0), value.group(0).replace(
        f"-->{value.group(2)}<!--", "-->0.999<!--")), encoding="utf-8")
    assert [m.marker for m in check_docs(root)] == [f"value:{value.group(1)}"]


def test_markers_that_name_nothing_are_errors(records: dict) -> None:
    with pytest.raises(results.RecordError, match="no record"):
        render_doc("<!-- results:nowhere -->\n<!-- /results:nowhere -->", records)
    with pytest.raises(results.RecordError, match="closing"):
        render_doc("<!-- results:embedded-dev -->\nno end", records)
    with pytest.raises(results.RecordError, match="no row"):
        render_doc("<!-- value:embedded-dev/nobody/bleu4 -->x<!-- /value -->", records)
    _, row = find_row(records, "embedded-dev/model")
    assert row["metrics"]["bleu4"] == json.loads((REPO / "metrics/eval.json").read_text())["bleu4"]


def test_a_record_without_provenance_is_refused(tmp_path: Path) -> None:
    record = json.loads((REPO / "results/embedded-dev.json").read_text())
    for key in ("command", "commit", "date", "machine", "split"):
        (tmp_path / "results").mkdir(exist_ok=True)
        bad = {k: v for k, v in record.items() if k != key}
        (tmp_path / "results/embedded-dev.json").write_text(json.dumps(bad))
        with pytest.raises(results.RecordError, match=key):
            load_records(tmp_path)


BANNED = [
    (re.compile(r"\bsessions? ?-?\d|\bthis session\b|another session|\bsessions so far\b", re.I), "session N"),
    (re.compile(r"\bissues? #?\d+|\bthe issue'?s?\b", re.I), "issue N"),
    (re.compile(r"(?<![\w#/])#\d+\b"), "#N"),
    (re.compile(r"\bthe seed'?s?\b(?! \d)|\bseed's (?:protocol|approach|arrays|batch|epochs)|\bvs the seed\b", re.I),
     "the seed (the Keras tutorial baseline)"),
]


def test_docs_speak_the_project_language() -> None:
    """Dates and commits, not work-session or issue numbers; the baseline by its name."""
    bad = []
    for path in doc_paths(REPO):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            bad += [f"{path.relative_to(REPO)}:{n}: {what}: {line.strip()[:100]}"
                    for rx, what in BANNED if rx.search(line)]
    assert not bad, "\n".join(bad)


def test_readme_keeps_the_two_commands_and_stays_short() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert "make repro   # set up .venv, generate the embedded data set, run the whole DAG, print BLEU" in readme
    assert "make test    # set up .venv with test extras, run the test suite" in readme
    assert len(readme) <= 180, len(readme)


def test_the_module_imports_only_the_standard_library_runtime_and_config() -> None:
    tree = ast.parse(Path(results.__file__).read_text(encoding="utf-8"))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    allowed = set(sys.stdlib_module_names) | {"yaml", "json", "__future__"}
    bad = [m for m in names if m.split(".")[0] not in allowed
           and not m.startswith(("captioner.runtime.", "captioner.config."))]
    assert not bad, bad
    assert set(results.__all__) <= set(dir(results))
