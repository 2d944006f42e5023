"""dvc.yaml, params.yaml and the typed params agree, key by key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.params import Params, load_params
from pfgm import zsolvers

ROOT = Path(__file__).resolve().parents[1]
STAGE_SECTIONS = {"prepare": "data", "train": "train", "evaluate": "evaluate", "sweep": "sweep",
                  "report": "report"}


@pytest.fixture(scope="module")
def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_params_yaml_is_valid_and_complete():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    load_params(ROOT / "params.yaml")
    for section, model in Params.model_fields.items():
        assert set(raw[section]) == set(model.annotation.model_fields), f"params.yaml section {section}"


@pytest.mark.parametrize("stage,section", sorted(STAGE_SECTIONS.items()))
def test_each_stage_tracks_its_own_section_whole(stages, stage, section):
    # The whole section (DVC tracks every key below it), so a key added to the model cannot be missed.
    assert section in stages[stage]["params"]
    assert set(Params.model_fields[section].annotation.model_fields)  # a section with keys


@pytest.mark.parametrize("stage", sorted(STAGE_SECTIONS))
def test_each_stage_runs_its_flow_and_depends_on_it(stages, stage):
    assert stages[stage]["cmd"].startswith(f"python -m flows {stage} --params params.yaml")  # the front door
    assert f"flows/{stage}.py" in stages[stage]["deps"] and "flows/__main__.py" in stages[stage]["deps"]
    for dep in stages[stage]["deps"]:
        if "${" not in dep:
            assert (ROOT / dep).exists(), f"stage {stage} depends on missing {dep}"


def test_the_default_run_sweeps_four_solvers_down_to_few_steps_then_reports(stages):
    sweep = load_params(ROOT / "params.yaml").sweep
    methods = {grid.method for grid in sweep.solvers}
    # RK45, the official Euler and improved Euler (steps in z), and the few-step solver
    assert {"dopri5", "euler", "heun", "dpmpp_2m"} <= methods
    for grid in sweep.solvers:
        assert len(grid.tolerances or grid.steps or []) >= 2, grid.method
    # Points at NFE <= 10 and at 10 < NFE <= 20 (where issue 10's winners are), from more than one solver.
    nfe = {(grid.method, zsolvers.evaluations(grid.method, steps)) for grid in sweep.solvers for steps in grid.steps or []}
    assert len({method for method, n in nfe if n <= 10}) >= 3 and len({m for m, n in nfe if 10 < n <= 20}) >= 2
    # The report reads what the sweep and evaluate stages write: DVC runs them first.
    assert "${sweep.table}" in stages["report"]["deps"] and "${evaluate.out}" in stages["report"]["deps"]
