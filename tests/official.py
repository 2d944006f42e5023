"""The official DDPM++ reference data in ../shared/reference/ddpmpp (beside the repository root)."""
from __future__ import annotations

from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ddpmpp"
EDM_REFERENCE = REFERENCE.parent / "edm"  # the official PFGM++ (EDM) networks and snapshots


def read_tsv(path: Path) -> tuple[list[tuple[str, tuple[int, ...], str, str]], dict[str, int]]:
    """Rows (key, shape, dtype, kind) and the '# name value' totals of a state-dict listing."""
    rows, totals = [], {}
    for line in path.read_text().splitlines()[1:]:
        if line.startswith("#"):
            name, value = line[1:].split()
            totals[name] = int(value)
        elif line:
            key, shape, dtype, _numel, kind = line.split("\t")
            rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype, kind))
    return rows, totals


def read_edm_tsv(path: Path) -> tuple[list[tuple[str, tuple[int, ...], str]], int]:
    """Rows (key, shape, dtype) of an edm/ `name<TAB>shape<TAB>dtype` listing, and its `total` line."""
    rows, total = [], None
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if fields[0] == "total":
            total = int(fields[1])
        elif line:
            rows.append((fields[0], tuple(int(s) for s in fields[1].split(",") if s), fields[2]))
    return rows, total
