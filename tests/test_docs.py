"""docs/render_tables.py: the docs' tables are what their docs/results/*.json files say."""

import json
import subprocess
import sys

from tests.helpers import PROJECT_ROOT

RENDER = PROJECT_ROOT / "docs" / "render_tables.py"
RECORD = {
    "title": "A measurement",
    "command": "python benchmarks/x.py",
    "machine": {"cpu": "Some CPU", "cores": 2, "cpu_flags": ["avx2"], "gpu": None, "python": "3.11.0"},
    "commit": "abc1234",
    "columns": ["variant", "img/s"],
    "rows": [["a", 1.5], ["b|c", 2]],
    "notes": "",
}


def render(*args):
    return subprocess.run([sys.executable, str(RENDER), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_the_repository_tables_match_their_json():
    res = render("--check")
    assert res.returncode == 0, res.stderr


def page_with(tmp_path, record):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.json").write_text(json.dumps(record))
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n<!-- results:x -->\nstale\n<!-- /results:x -->\n\nafter\n")
    return page


def test_render_writes_the_table_and_its_provenance_then_check_passes(tmp_path):
    page = page_with(tmp_path, RECORD)
    res = render("--docs", tmp_path, "--check")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1 and "page.md" in res.stderr
    assert render("--docs", tmp_path).returncode == 0
    text = page.read_text()
    assert "| variant | img/s |" in text and "| a | 1.5 |" in text and "| b\\|c | 2 |" in text
    assert "Some CPU, 2 cores" in text and "avx2" in text and "`abc1234`" in text and "python benchmarks/x.py" in text
    assert text.endswith("<!-- /results:x -->\n\nafter\n") and "stale" not in text
    assert render("--docs", tmp_path, "--check").returncode == 0


def test_a_missing_key_is_a_one_line_error(tmp_path):
    record = {k: v for k, v in RECORD.items() if k != "commit"}
    page_with(tmp_path, record)
    res = render("--docs", tmp_path, "--check")
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and "commit" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_row_of_the_wrong_width_is_a_one_line_error(tmp_path):
    page_with(tmp_path, {**RECORD, "rows": [["a", 1, 2]]})
    res = render("--docs", tmp_path)
    assert res.returncode == 2 and "row 0 has 3 cells for 2 columns" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
