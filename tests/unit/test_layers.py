"""The package layout is a stack: a module imports only from its own layer or the layers
below it, never upward (the store knows nothing of jobs, a runner nothing of Celery).
Imports inside functions count too: a lazy import upward is still a dependency."""

from __future__ import annotations

import ast

from helpers import ROOT

#: Lowest first. A module belongs to the first entry that is its name or a parent of it.
LAYERS = [
    ["opsq.errors", "opsq.settings", "opsq.limits", "opsq.status"],
    ["opsq.queues", "opsq.app"],
    ["opsq.store"],
    ["opsq.inventory"],
    ["opsq.hostrun"],
    ["opsq.jobs"],
    ["opsq.schedules"],
    ["opsq.worker"],
    # The console takes job lines in the command line's own syntax (cli.job_line_spec).
    ["opsq.web", "opsq.cli", "opsq.quick"],
    ["opsq"],
]


def layer_of(module: str) -> int:
    best, level = "", -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, level = name, i
    assert level >= 0, f"{module} is in no layer"
    return level


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted((ROOT / "opsq").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if ".migrations." in name:
            continue  # Alembic loads them by path; they import only the store
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                # "from opsq.jobs import state" imports the module opsq.jobs.state;
                # "from opsq.jobs import JobSpec" imports from the package opsq.jobs.
                whole = f"{node.module}.{alias.name}"
                out.add(whole if whole in modules else node.module)
    return {m for m in out if m == "opsq" or m.startswith("opsq.")}


def test_no_module_imports_from_a_layer_above_its_own():
    modules = _modules()
    upward = []
    for name, tree in modules.items():
        mine = layer_of(name)
        for target in _imports(tree, set(modules)):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]  # a name inside a module
            if layer_of(target) > mine:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_every_module_has_a_layer():
    for name in _modules():
        layer_of(name)


def test_the_check_sees_an_upward_import():
    tree = ast.parse("def f():\n    from opsq.jobs import state\n")
    assert "opsq.jobs.state" in _imports(tree, {"opsq.jobs.state"})
    assert layer_of("opsq.jobs.state") > layer_of("opsq.store.db")
