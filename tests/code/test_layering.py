"""Only flows/ imports prefect; imports go flows -> tasks -> models."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imports(package: str):
    for path in (REPO / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, alias.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield path, node.module


def test_only_flows_imports_prefect():
    offenders = [
        f"{p.relative_to(REPO)}: {m}"
        for pkg in ("tasks", "models")
        for p, m in _imports(pkg)
        if m == "prefect" or m.startswith("prefect.")
    ]
    assert offenders == []


def test_imports_go_one_way():
    bad = [f"{p.relative_to(REPO)}: {m}" for p, m in _imports("tasks") if m.split(".")[0] == "flows"]
    bad += [f"{p.relative_to(REPO)}: {m}" for p, m in _imports("models") if m.split(".")[0] in ("flows", "tasks")]
    assert bad == []


def test_only_the_family_modules_know_a_family():
    """flows/, the gate, registry, lineage, ledger, backtest, report and service choose a family
    through `tasks.families.family_of(config.task)`; none imports a family module itself."""
    family_modules = ("models.classifier", "tasks.families.")
    offenders = [
        f"{p.relative_to(REPO)}: {m}"
        for pkg in ("flows", "tasks")
        for p, m in _imports(pkg)
        if (m == "models.classifier" or m.startswith(family_modules)) and "families" not in p.parts
    ]
    assert offenders == []


def test_every_family_module_has_the_whole_protocol():
    from tasks.families import MODULES, Family, family_of

    wanted = {n for n in dir(Family) if not n.startswith("_")} | set(Family.__annotations__)
    for task in MODULES:
        module = family_of(task)
        assert task == module.NAME
        assert sorted(wanted - set(dir(module))) == [], task
