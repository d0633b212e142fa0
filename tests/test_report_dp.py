"""`genlab report` on a private run: the privacy row shows what checkpoint/state.json's `dp`
entry says (epsilon spent, delta, noise multiplier, accountant), in that run's column."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("opacus")

DCGAN_TINY = ("model.ngf=4", "model.ndf=4", "model.nz=8")


class _Cells(HTMLParser):
    """The raw HTML of each top-level cell of the report card's privacy row."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.depth, self.in_row, self.cells, self.text = 0, False, [], ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.depth += 1
        if self.in_row and not (tag == "td" and self.depth == 1):
            self.cells[-1] += self.get_starttag_text() if self.cells else ""
        elif self.in_row:
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.depth -= 1
        if tag == "tr" and self.depth == 1:
            self.in_row = False
        elif self.in_row and self.cells and not (tag == "td" and self.depth == 1):
            self.cells[-1] += f"</{tag}>"

    def handle_data(self, data: str) -> None:
        if self.depth == 1 and data == "privacy":
            self.in_row = True
        elif self.in_row and self.cells:
            self.cells[-1] += data


def _privacy_cells(page: str) -> list[str]:
    parser = _Cells()
    parser.feed(page)
    assert parser.cells, "no privacy row"
    return parser.cells


def _value(cell: str, key: str) -> str:
    found = re.search(rf"<td>{re.escape(key)}</td><td>(?:<b>)?([^<]*)", cell)
    assert found, f"{key} not in the privacy cell"
    return found.group(1)


@pytest.fixture(scope="module")
def private_run(tmp_path_factory, train_tiny) -> Path:
    """A tiny private DCGAN: 6 steps at noise multiplier 1.3, accounted with PRV (not the
    default, so the test can tell the accountant really is read from the run)."""
    return train_tiny(tmp_path_factory.mktemp("dp") / "private", steps=6, dp=True,
                      overrides=("train.dp_noise_multiplier=1.3", "train.dp_accountant=prv"))


def test_report_shows_a_private_runs_guarantee_in_its_column(tmp_path: Path, private_run: Path,
                                                            tiny_run: Path, run_cli) -> None:
    dp = json.loads((private_run / "checkpoint" / "state.json").read_text())["dp"]
    assert dp["accountant"] == "prv" and dp["steps"] == 6 and dp["epsilon_spent"] > 0
    out = tmp_path / "report.html"
    code, _, err = run_cli("report", tiny_run, private_run, "--out", out)
    assert code == 0, err
    plain, private = _privacy_cells(out.read_text())
    assert "not private" in plain and "epsilon" not in plain
    assert _value(private, "epsilon spent") == f"{dp['epsilon_spent']:.4g}"
    assert _value(private, "delta") == "1e-05"
    assert _value(private, "noise multiplier") == "1.3"
    assert _value(private, "accountant") == "prv"
    assert _value(private, "steps accounted") == "6"
    assert "epsilon target" not in private  # a noise-multiplier run has none
    assert "the discriminator trained privately" in private


def test_report_flags_a_private_run_whose_accounting_is_missing(tmp_path: Path,
                                                                private_run: Path,
                                                                run_cli) -> None:
    """A --dp run must never look like a run with no guarantee to report, nor like one with."""
    run = tmp_path / "run"
    shutil.copytree(private_run, run)
    state = run / "checkpoint" / "state.json"
    entry = json.loads(state.read_text())
    del entry["dp"]
    state.write_text(json.dumps(entry))
    out = tmp_path / "report.html"
    code, _, err = run_cli("report", run, "--out", out)
    assert code == 0, err
    (cell,) = _privacy_cells(out.read_text())
    assert "trained with --dp" in cell and "no dp entry" in cell
