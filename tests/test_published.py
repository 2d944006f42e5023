"""paper/published.csv: its schema, and every number checked against PFGM.md section 8 literally."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pfgm.published import COLUMNS, PUBLISHED_CSV, for_data, load_published, published_data_names

SPEC = Path(__file__).resolve().parents[2] / "shared" / "docs" / "PFGM.md"


@pytest.fixture(scope="module")
def spec_text() -> str:
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} not found (shared/ must be a sibling of the repo root)")
    return SPEC.read_text()


@pytest.fixture(scope="module")
def spec_table(spec_text) -> list[dict[str, str]]:
    """The markdown table under '## 8.' as dicts keyed by its header (model, data, FID, IS, NFE, source)."""
    section = spec_text.split("## 8.", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


@pytest.fixture(scope="module")
def rows():
    return load_published(PUBLISHED_CSV)


def _find(rows, model: str, data: str, metric: str):
    found = [r for r in rows if (r.model, r.data, r.metric) == (model, data, metric)]
    assert len(found) <= 1, f"duplicate rows for {model} / {data} / {metric}"
    return found[0] if found else None


def test_schema(rows):
    assert PUBLISHED_CSV.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert {r.metric for r in rows} == {"FID", "IS", "NFE"}
    assert all(r.source and r.solver for r in rows)
    assert published_data_names(rows) == ["cifar10", "celeba64", "lsun-bedroom256", "ffhq64"]
    assert {r.data for r in for_data(rows, "cifar10")} == {"CIFAR-10"}


def test_spec_table_parses(spec_table):
    assert len(spec_table) == 8 and spec_table[0]["model"] == "PFGM DDPM++"


def test_every_number_of_the_spec_table_is_in_the_csv_and_nothing_else(spec_table, rows):
    expected = 0
    for line in spec_table:
        for metric in ("FID", "IS", "NFE"):
            cell = line[metric]
            row = _find(rows, line["model"], line["data"], metric)
            if cell == "-":
                assert row is None, f"{line['model']} {line['data']}: {metric} is not published"
                continue
            expected += 1
            number = re.match(r"(~?)([0-9.]+)", cell)
            assert row is not None, f"missing {line['model']} {line['data']} {metric}"
            assert row.value == float(number.group(2)) and row.approximate == (number.group(1) == "~")
            assert row.source == line["source"]
            solver = re.search(r"\((\w+)\)", cell)
            if solver:  # the spec names the solver next to the NFE
                assert row.solver.startswith(solver.group(1))
    assert len(rows) == expected


def test_protocols_follow_the_spec_text(spec_text, rows):
    spec_text = " ".join(spec_text.split())  # the spec wraps its lines
    assert "PFGM used TF Inception with 10k samples" in spec_text
    assert "PFGM++ used 50k samples and took the best of three seeds" in spec_text
    assert "rtol = atol = 1e-4" in spec_text and "18 steps, NFE 35" in spec_text
    paper_table = [r for r in rows if r.method == "PFGM" and r.data == "CIFAR-10" and r.metric != "NFE"]
    assert paper_table and all(r.num_samples == 10000 and r.features == "TF Inception" for r in paper_table)
    pfgmpp_fids = [r for r in rows if r.source == "PFGM++ README" and r.metric == "FID"]
    assert pfgmpp_fids and all(r.num_samples == 50000 and r.seeds == "best of 3" for r in pfgmpp_fids)
    assert all(r.tolerance == "rtol=atol=1e-4" for r in rows if r.method == "PFGM")
    assert all(r.steps == 18 for r in rows if r.value == 35 and r.metric == "NFE")
    # PFGM.md names the training set's statistics (and TF Inception) for PFGM's CIFAR-10 table and for
    # PFGM++'s numbers; nothing for the README-only CelebA and LSUN rows: those cells stay empty.
    assert "samples against the **training set's** Inception statistics" in spec_text
    stated = [r for r in rows if r.metric != "NFE" and (r.data == "CIFAR-10" or r.source == "PFGM++ README")]
    assert stated and all(r.reference_statistics == "training set" and r.features == "TF Inception" for r in stated)
    assert all(r.reference_statistics == "" for r in rows if r not in stated)


def test_a_bad_table_is_refused(tmp_path):
    bad = tmp_path / "published.csv"
    lines = PUBLISHED_CSV.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].replace(",FID,", ",KID,")]) + "\n")
    with pytest.raises(ValueError, match="metric must be one of"):
        load_published(bad)
    bad.write_text("data,model\nCIFAR-10,x\n")
    with pytest.raises(ValueError, match="columns must be"):
        load_published(bad)
