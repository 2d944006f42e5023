"""The shape issue 13 set for the code, held: each stage flow reads as its story (under 200 lines), no function
in the library or the flows runs past a screen, and no stage flow borrows from another stage flow (shared
glue lives in flows/common.py; only the composing flows run other flows, as subflows)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE_FLOWS = ("prepare", "train", "evaluate", "sweep", "report", "import_official", "robustness")
#: Flows whose job is to run other flows (as subflows or deployments).
COMPOSING = {"pipeline", "schedule", "deployments", "robustness"}
MAX_FLOW_LINES, MAX_FUNCTION_LINES = 200, 45


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("stage", STAGE_FLOWS)
def test_a_stage_flow_is_short(stage):
    lines = len((ROOT / "flows" / f"{stage}.py").read_text().splitlines())
    assert lines < MAX_FLOW_LINES, f"flows/{stage}.py has {lines} lines: move library work into pfgm"


def test_no_function_runs_past_a_screen():
    long = [f"{path.relative_to(ROOT)}:{line} {name} ({length} lines)"
            for folder in ("pfgm", "flows") for path in sorted((ROOT / folder).rglob("*.py"))
            for name, line, length in _functions(path) if length > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _flows_imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flows."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("flows."))
    return names


@pytest.mark.parametrize("stage", sorted(set(STAGE_FLOWS) - COMPOSING))
def test_a_stage_flow_imports_no_other_stage_flow(stage):
    borrowed = _flows_imported(ROOT / "flows" / f"{stage}.py") & set(STAGE_FLOWS) - {stage}
    assert not borrowed, f"flows/{stage}.py imports flows {sorted(borrowed)}: shared glue belongs in flows/common.py"
