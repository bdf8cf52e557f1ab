"""One-way layering of ``pile_jax`` (issue 18), checked on the source with :mod:`ast`.

* The module import graph has no cycle. Every ``import`` / ``from ... import`` counts, at module
  level and inside functions (lazy imports), relative imports resolved against the importing module.
  ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg`` (whose
  ``__init__`` runs). Importing ``a.b.c`` is an edge to ``a.b.c`` only: a package's ``__init__`` that
  re-exports its submodules is the package's own public face, not a layer.
* No function or method body in ``pile_jax/`` is longer than ``MAX_FUNCTION_LINES`` lines, so each
  job reads on two screens: from the ``def`` line to the last line of the body, decorators and the
  docstring excluded (a docstring is the contract, e.g. ``ensemble.pile``'s formulas and doctests).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "pile_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_FUNCTION_LINES = 100


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def parse_modules(root: Path = ROOT) -> dict[str, tuple[Path, ast.Module]]:
    """``{dotted module name: (path, parsed tree)}`` for every ``.py`` file under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        out[module_name(path)] = (path, ast.parse(path.read_text(), filename=str(path)))
    return out


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """``from .x import y`` inside ``importer``: the absolute name of ``.x``."""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_edges(modules: dict[str, tuple[Path, ast.Module]]) -> dict[str, dict[str, int]]:
    """``{importer: {imported module: first line}}`` restricted to modules of the package."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, (path, tree) in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (_resolve_relative(name, is_package, node.level, node.module) if node.level
                        else node.module or "")
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                # ``import a.b.c`` where only a.b is ours (or a dotted attribute): the longest known prefix.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].setdefault(target, node.lineno)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as ``[m0, m1, ..., m0]``, or None (iterative DFS, white/grey/black)."""
    colour = {n: 0 for n in graph}
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def long_functions(modules, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for name, (path, tree) in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                first = node.body[0]
                if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                        and isinstance(first.value.value, str)):
                    length -= first.end_lineno - first.lineno + 1
                if length > limit:
                    out.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name} ({length} lines)")
    return sorted(out)


# ---- the checker itself, on hand-made packages ---------------------------------------------


def _write(tmp_path, files):
    for rel, text in files.items():
        p = tmp_path / PACKAGE / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path / PACKAGE


def test_checker_sees_lazy_and_relative_cycles(tmp_path):
    root = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "from .sub import b\n",
        "sub/__init__.py": "",
        "sub/b.py": "def f():\n    from ..c import x\n    return x\n",
        "c.py": "import pile_jax.a\nx = 1\n",
    })
    mods = {module_name_at(root, p): (p, ast.parse(p.read_text())) for p in sorted(root.rglob("*.py"))}
    graph = import_edges(mods)
    assert graph["pile_jax.a"] == {"pile_jax.sub.b": 1}
    assert graph["pile_jax.sub.b"] == {"pile_jax.c": 2}
    assert graph["pile_jax.c"] == {"pile_jax.a": 1}
    assert find_cycle(graph) == ["pile_jax.a", "pile_jax.sub.b", "pile_jax.c", "pile_jax.a"]
    del graph["pile_jax.c"]["pile_jax.a"]
    assert find_cycle(graph) is None


def test_checker_counts_def_to_last_body_line_without_the_docstring():
    doc = '    """' + "contract\n" * 30 + '    """\n'
    src = ("def f():\n" + doc + "    x = 1\n" * 99 + "\n\nclass K:\n    def g(self):\n" + "        y = 2\n" * 100)
    tree = ast.parse(src)
    mods = {"pile_jax.m": (ROOT / "m.py", tree)}
    assert long_functions(mods) == ["pile_jax/m.py:135 g (101 lines)"]


def module_name_at(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# ---- the package ---------------------------------------------------------------------------

#: the layers of docs/architecture.md, bottom up; a module imports only from its own layer or
#: below. Package ``__init__`` modules (re-export faces) and modules not listed are not checked.
LAYERS = (
    ("leaves", ("config", "caches", "io", "logs", "data.errors", "numerics")),
    ("core + data", ("losses", "metrics", "ensemble", "_validate", "params", "data.collection", "data.trec",
                     "data.groups", "data.teacher_files", "data.teacher_table", "data.tfds_builder", "data.sampler",
                     "data.loader", "data.textstore", "data.layouts", "data.table_groups")),
    ("shared compute", ("parallel", "bm25")),
    ("models", ("models.config", "models.encoder", "models.cross_encoder", "models.hf_io", "models.hub",
                "models.tokenize", "models.token_store", "models.students", "models.frozen_docs", "models.features", "models.export",
                "models.reranker")),
    ("training", ("scoring", "train.optim", "train.objective", "train.step", "train.checkpoint", "train.evaluate",
                  "train.loop")),
    ("preparation", ("prepare", "prepare_table", "rankers", "layer_distill")),
    ("jobs", ("pipeline", "study", "train_job", "report", "schema")),
    ("CLI", ("jobs", "cli")),
)


@pytest.fixture(scope="module")
def modules():
    return parse_modules()


def test_no_import_cycle(modules):
    graph = import_edges(modules)
    cycle = find_cycle(graph)
    if cycle:
        hops = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle:\n  " + "\n  ".join(hops))


def test_no_function_over_100_lines(modules):
    offenders = long_functions(modules)
    assert not offenders, "functions over 100 lines:\n  " + "\n  ".join(offenders)


def test_imports_point_down(modules):
    layer = {f"{PACKAGE}.{m}": (i, name) for i, (name, mods) in enumerate(LAYERS) for m in mods}
    up = []
    for a, targets in import_edges(modules).items():
        for b, line in targets.items():
            if a in layer and b in layer and layer[b][0] > layer[a][0]:
                up.append(f"{a} ({layer[a][1]}, line {line}) -> {b} ({layer[b][1]})")
    assert not up, "imports pointing up:\n  " + "\n  ".join(sorted(up))


def test_no_submodule_shadows_a_public_function():
    """Importing a submodule binds it as an attribute of its package: a module named like a public
    function (``pile_jax/precision.py`` vs the metric ``pile_jax.precision``) silently replaced the
    function once anything imported the module. Import every submodule, then every public name of
    the package faces must still be what they export."""
    import importlib
    import pkgutil
    import types

    import pile_jax

    before = {name: getattr(pile_jax, name) for name in dir(pile_jax) if not name.startswith("_")}
    for info in pkgutil.walk_packages(pile_jax.__path__, "pile_jax."):
        if ".resources" not in info.name:
            importlib.import_module(info.name)
    shadowed = [name for name, obj in before.items()
                if not isinstance(obj, types.ModuleType) and getattr(pile_jax, name) is not obj]
    assert not shadowed, f"submodules shadow public names of pile_jax: {shadowed}"
