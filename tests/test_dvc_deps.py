"""dvc.yaml: every project module a stage's command imports is one of the stage's deps, so that DVC
re-runs the stage when that code changes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PACKAGES = ("pfgm", "flows")


def _modules(command: str) -> list[str]:
    """The modules a stage's command runs: `python -m flows.<stage>`, or the front door `python -m flows
    <stage>`, which imports flows.<stage> by name (invisible to the import statements read below)."""
    words = command.split()
    module = words[words.index("-m") + 1]
    if module == "flows":
        return ["flows.__main__", f"flows.{words[words.index('-m') + 2]}"]
    return [module]


def _file_of(module: str) -> Path | None:
    """The project file of a dotted module name (a package's __init__.py), or None outside the project."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every module an import statement of `path` may name, at any depth in the file (lazy imports
    included): `from a import b` names both a and a.b, since b may be a submodule."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(filter(None, [*parent, base]))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _imported_project_files(modules: list[str]) -> list[str]:
    """Files under pfgm/ and flows/ that running `modules` can load (packages' __init__.py included),
    found by reading the import statements: no torch import, and lazy imports count too."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
            prefix = ".".join(parts[:depth])
            path = _file_of(prefix)
            if path is not None and prefix not in seen:
                seen[prefix] = path
                todo.extend(_imports(path, prefix))
    return sorted(str(path.relative_to(ROOT)) for path in seen.values())


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_depends_on_every_module_its_command_imports(stage):
    modules = _modules(STAGES[stage]["cmd"])
    imported = _imported_project_files(modules)
    assert f"flows/{stage}.py" in imported  # the check sees the stage's own code
    assert all(f"{module.replace('.', '/')}.py" in imported for module in modules)
    missing = [path for path in imported if not _covered(path, STAGES[stage]["deps"])]
    assert not missing, f"dvc.yaml stage {stage} imports {missing} but does not list them in deps"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_lists_no_flows_module_its_command_does_not_import(stage):
    # A stale dep re-runs the stage (training, on the train stage's deps) whenever that unrelated code changes.
    imported = _imported_project_files(_modules(STAGES[stage]["cmd"]))
    listed = [dep for dep in STAGES[stage]["deps"] if dep.startswith("flows/")]
    stale = [dep for dep in listed if dep not in imported]
    assert not stale, f"dvc.yaml stage {stage} lists {stale} in deps, but its command does not import them"
