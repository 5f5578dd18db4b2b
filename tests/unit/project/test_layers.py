"""The package's shape, read from its import statements (at any depth, lazy ones included):
sub-packages in layers, each importing only its own modules and the layers below it; no import
cycle between modules; across sub-packages, and from stages/ and benchmarks/, only public names
(a module's `__all__`); the core never imports Ray, HTTP or the CLI. docs/ARCHITECTURE.md draws it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SRC = REPO / "src"

# From the bottom up; a sub-package may import its own modules and those of lower layers only
# (sub-packages on one layer do not import each other).
LAYERS: list[tuple[str, ...]] = [
    ("runtime",),
    ("config",),
    ("datasets",),
    ("features",),
    ("model",),
    ("decoding",),
    ("training", "evaluation"),
    ("engines",),
    ("app",),
]
LAYER = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
EDGE_ONLY = {"ray": ("engines",), "fastapi": ("app",), "uvicorn": ("app",), "starlette": ("app",)}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "captioner").rglob("*.py"))}


MODULES = project_modules()


def resolve(name: str) -> str | None:
    """The project module that `name` (a module or a module.attribute) refers to."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(path: Path, package: str) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) of every import statement in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{mod}" if mod else base
            out += [(mod, a.name, node.lineno) for a in node.names]
    return out


def sub_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYER) else None


def graph() -> dict[str, set[str]]:
    """module -> project modules it imports (a `from pkg import sub` counts as importing sub)."""
    edges: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for target, name, _ in imports(path, package):
            if not target.startswith("captioner"):
                continue
            full = resolve(f"{target}.{name}") if name else resolve(target)
            if full and full != mod:
                targets.add(full)
        edges[mod] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(edges.items()):
        src = sub_package(mod)
        for t in sorted(targets):
            dst = sub_package(t)
            if mod == "captioner":
                bad.append(f"{mod} -> {t}: captioner/__init__.py imports nothing")
            elif src is None or dst is None or src == dst:
                continue
            elif src not in LAYER or dst not in LAYER:
                bad.append(f"{mod} -> {t}: sub-package not in LAYERS")
            elif LAYER[dst] >= LAYER[src]:
                bad.append(f"{mod} -> {t}: {src} (layer {LAYER[src]}) may not import {dst} (layer {LAYER[dst]})")
    return bad


def public_names(module: str) -> set[str] | None:
    """A module's `__all__` (None when it declares none)."""
    for node in ast.parse(MODULES[module].read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def private_imports(path: Path, own: str | None) -> list[str]:
    """Names taken from another sub-package's module that its `__all__` does not export."""
    bad = []
    for target, name, line in imports(path, ""):
        if not target.startswith("captioner.") or name is None or resolve(target) != target:
            continue
        if f"{target}.{name}" in MODULES or sub_package(target) == own:
            continue  # a submodule, or the importer's own sub-package
        exported = public_names(target)
        if name.startswith("_") or (exported is not None and name not in exported):
            bad.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}: {name} from {target}")
    return bad


def test_no_module_is_left_at_the_top_of_the_package() -> None:
    top = sorted(p.name for p in (SRC / "captioner").glob("*.py"))
    assert top == ["__init__.py", "__main__.py"], top
    assert {p.name for p in (SRC / "captioner").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYER)


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_sub_packages_import_only_lower_layers() -> None:
    assert layer_violations(graph()) == []


def test_every_sub_package_init_imports_nothing() -> None:
    """An __init__ only documents its modules, so importing one module never loads its siblings
    (and a stage's DVC deps stay as narrow as the modules it uses)."""
    for pkg in LAYER:
        init = SRC / "captioner" / pkg / "__init__.py"
        assert not [i for i in imports(init, f"captioner.{pkg}") if i[0].startswith("captioner")], init


@pytest.mark.parametrize("folder", ["src/captioner", "stages", "benchmarks"])
def test_only_public_names_cross_a_sub_package(folder: str) -> None:
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        own = sub_package(module_name(path)) if folder == "src/captioner" else None
        bad += private_imports(path, own)
    assert bad == []


def test_the_core_never_imports_ray_http_or_the_cli() -> None:
    bad = []
    for mod, path in MODULES.items():
        src = sub_package(mod)
        for target, _, line in imports(path, mod):
            top = target.split(".")[0]
            if top in EDGE_ONLY and src not in EDGE_ONLY[top]:
                bad.append(f"{mod}:{line} imports {target}")
            if target.startswith("captioner.app") and src != "app" and mod != "captioner.__main__":
                bad.append(f"{mod}:{line} imports {target}")
    assert bad == []


FOLDER_FILES = re.compile(r"\bmodel[\w-]*\.keras\b|\b(?:meta|vocab|decoding)\.json\b|\bmodel[_-]$")
FOLDER_OWNER = "captioner.model.folder"


def folder_file_names(path: Path) -> list[str]:
    """String literals in code (docstrings aside) that spell a model folder's file names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{n.lineno}: {n.value!r}"
            for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs and FOLDER_FILES.search(n.value)]


def test_only_the_model_folder_module_spells_its_file_names() -> None:
    bad = [hit for mod, path in MODULES.items() if mod != FOLDER_OWNER for hit in folder_file_names(path)]
    assert bad == []
    assert folder_file_names(MODULES[FOLDER_OWNER])  # the check sees the owner's own names


def test_the_checks_see_a_cycle_an_upward_import_and_a_private_name(tmp_path: Path) -> None:
    """The checks themselves work: a made-up cycle, a training -> app import and a private
    name are each found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    edges = graph()
    edges["captioner.training.fit"] = edges["captioner.training.fit"] | {"captioner.app.cli"}
    assert any("training (layer 6) may not import app" in v for v in layer_violations(edges))
    edges = graph()
    edges["captioner.training.fit"] = edges["captioner.training.fit"] | {"captioner.evaluation.bleu"}
    assert any("may not import evaluation" in v for v in layer_violations(edges))
    probe = tmp_path / "probe.py"
    probe.write_text("from captioner.model.step import _Merge\nfrom captioner.training.fit import _global_count\n")
    assert len(private_imports(probe, None)) == 2
    probe.write_text('"""meta.json in a docstring is prose."""\nNAMES = ["model_3.keras", "decoding.json"]\n')
    assert len(folder_file_names(probe)) == 2
