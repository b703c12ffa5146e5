"""eval.py's report.html (parsed: its sections, every embedded image decoded), metrics.json's
new sections, the dataset overview (`python -m pneumonia.tools.describe`) and unknown naming."""

import base64
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from PIL import Image

from pneumonia.data.synthetic import make_chest_xray_tree
from pneumonia.evaluation import METRIC_NAMES, REPORT_KEYS
from pneumonia.runners.eval import evaluate
from tests.helpers import PROJECT_ROOT, compose_cfg

SECTIONS = {
    "run",
    "metrics",
    "confusion",
    "curves",
    "operating-points",
    "calibration",
    "subgroups",
    "patients",
    "errors",
    "dataset",
}


class Page(HTMLParser):
    """What the tests look at: element ids, image sources, scripts, external references, text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids, self.images, self.scripts, self.external, self.text = set(), [], 0, [], []
        self.cells, self._cell = [], None  # the text of every table cell (th, td)
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("td", "th"):
            self._cell = []
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            if value.startswith(("http:", "https:", "//", "file:")) or (tag == "link" and value):
                self.external.append(value)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())


def decode(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:40]
    img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
    img.load()
    return img


def eval_cfg(checkpoint, root, out, *extra):
    return compose_cfg(
        "eval",
        [
            f"ckpt_path={checkpoint}",
            "trainer.accelerator=cpu",
            f"data.root={root}",
            f"data.cache_dir={out.parent / 'cache'}",
            "trainer.enable_progress_bar=false",
            *extra,
        ],
        out,
    )


@pytest.fixture(scope="module")
def evaluated(tiny_checkpoint, xray_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "eval"
    rep = evaluate(eval_cfg(tiny_checkpoint, xray_root, out, "logger=tensorboard"))
    return out, rep


@pytest.mark.slow
def test_metrics_json_keeps_its_keys_first_and_adds_intervals_and_sections(evaluated):
    out, rep = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics)[: len(REPORT_KEYS)] == list(REPORT_KEYS)
    assert list(metrics)[len(REPORT_KEYS) :] == [
        "ci95",
        "bootstrap",
        "calibration",
        "operating_points",
        "subgroups",
        "per_patient",
    ]
    assert metrics == rep
    for m in METRIC_NAMES:
        lo, hi = metrics["ci95"][m]
        assert lo <= metrics[m] + 1e-6 and metrics[m] - 1e-6 <= hi
    boot = metrics["bootstrap"]
    assert boot["resamples"] == 2000 and boot["unit"] == "patient" and boot["units"] < metrics["n"]
    assert boot["seconds"] < 5
    cal = metrics["calibration"]
    assert cal["bins"] == 15 and 0 <= cal["ece"] <= 1 and 0 <= cal["brier"] <= 1 and cal["temperature"] is None
    ops = metrics["operating_points"]
    assert [r["target_sensitivity"] for r in ops] == [0.9, 0.95, 0.99, None]
    assert ops[-1]["threshold"] == metrics["threshold"] and ops[-1]["fp"] == metrics["fp"]
    assert metrics["subgroups"]["available"] and {r["subtype"] for r in metrics["subgroups"]["rows"]} == {
        "bacteria",
        "virus",
    }
    assert sum(r["images"] for r in metrics["subgroups"]["rows"]) == metrics["tp"] + metrics["fn"]
    pp = metrics["per_patient"]
    assert pp["available"] and pp["patients"] == boot["units"] and pp["images_per_patient"]["max"] == 2
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["classes"]["NORMAL"]["images"] == 16 and dataset["classes"]["PNEUMONIA"]["images"] == 16
    assert dataset["patients"] == pp["patients"]


def test_report_has_every_section_and_only_embedded_images(evaluated, tiny_checkpoint):
    out, rep = evaluated
    html = (out / "report.html").read_text(encoding="utf-8")
    page = Page(html)
    assert SECTIONS <= page.ids
    assert page.scripts == 0 and page.external == []
    images = [decode(src) for src in page.images]  # every image decodes
    assert len(images) >= 4  # confusion matrix, ROC, PR, reliability (+ the gallery when there are errors)
    assert all(img.width > 200 and img.height > 200 for img in images)
    assert "shift" in page.ids and any(img.width > 3 * img.height for img in images)  # the shift figure's panels
    assert len(images) == 5 + (rep["fp"] + rep["fn"] > 0)  # + the shift figure
    text = page.plain
    assert str(tiny_checkpoint) in text
    for m in METRIC_NAMES:
        assert f"{rep[m]:.4f}" in text
        lo, hi = rep["ci95"][m]
        assert f"[{lo:.4f}, {hi:.4f}]" in text
    assert "ECE (15 bins)" in text and "bacterial pneumonia" in text and "viral pneumonia" in text
    assert "2000 resamples of the" in text and "patients" in text
    assert "git commit" in text or "not a git checkout" in text
    assert "sensitivity >= 0.95" in text and "chosen threshold" in text
    # the recipe is a readable key/value table: no cell carries a whole array (the validation ROC)
    assert page.cells and max(len(c) for c in page.cells) <= 300, max(page.cells, key=len)[:200]
    assert "recipe.net" in " ".join(page.cells)


def test_recipe_rows_summarise_the_roc_and_long_values():
    from pneumonia.evaluation.report import MAX_CELL, recipe_rows

    roc = {"thresholds": [i / 500 for i in range(500)], "sensitivity": [1.0] * 500, "specificity": [0.5] * 500}
    rows = dict(
        recipe_rows(
            {
                "threshold": 0.4,
                "recipe": {
                    "net": {"depth": 5, "widths": [32, 64]},
                    "val_roc": roc,
                    "val_report": {"auroc": 0.9},
                    "note": "x" * 1000,
                    "many": list(range(40)),
                },
            }
        )
    )
    assert rows["recipe.val_roc"].startswith("500 points")
    assert rows["recipe.net.depth"] == "5" and rows["recipe.net.widths"] == "[32, 64]"
    assert rows["recipe.many"] == "40 values (not shown)"
    assert len(rows["recipe.note"]) == MAX_CELL and "recipe.val_report" not in rows
    assert all(len(v) <= MAX_CELL for v in rows.values())


@pytest.mark.slow
def test_printed_table_and_tensorboard_text_have_the_intervals(tiny_checkpoint, xray_root, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "eval"
    rep = evaluate(
        eval_cfg(
            tiny_checkpoint,
            xray_root,
            out,
            "gallery_size=0",
            "describe=false",
            "intervals.resamples=500",
            "intervals.seed=3",
        )
    )
    printed = capsys.readouterr().out
    lo, hi = rep["ci95"]["auroc"]
    assert "95% CI" in printed and f"[{lo:.4f}, {hi:.4f}]" in printed and "ECE (15 equal-width bins)" in printed
    assert rep["bootstrap"]["resamples"] == 500 and rep["bootstrap"]["seed"] == 3
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert "eval/metrics/text_summary" in acc.Tags()["tensors"]
    assert "test/reliability_diagram" in acc.Tags()["images"]
    page = Page((out / "report.html").read_text())
    assert "describe=false" in page.plain and len(page.images) == 5  # no gallery asked for (4 figures + shift)


@pytest.mark.slow
def test_errors_gallery_is_in_the_report(tiny_checkpoint, xray_root, tmp_path):
    out = tmp_path / "eval"
    rep = evaluate(eval_cfg(tiny_checkpoint, xray_root, out, "threshold=0.0", "logger=none", "intervals.resamples=200"))
    assert rep["fp"] == 16
    page = Page((out / "report.html").read_text())
    gallery = decode(page.images[-2])  # the errors section, then the shift figure
    with Image.open(out / "errors_gallery.png") as img:
        assert gallery.size == img.size
    assert "given on the command line (threshold=0.0)" in page.plain


def test_unknown_naming_says_so(tiny_checkpoint, xray_root, tmp_path):
    root = tmp_path / "renamed"
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / "test" / cls).mkdir(parents=True)
        for i, f in enumerate(sorted((xray_root / "test" / cls).iterdir())):
            shutil.copy(f, root / "test" / cls / f"scan_{cls.lower()}_{i}{f.suffix}")
    out = tmp_path / "eval"
    rep = evaluate(eval_cfg(tiny_checkpoint, root, out, "logger=none", "intervals.resamples=200"))
    assert rep["bootstrap"]["unit"] == "image" and rep["bootstrap"]["units"] == 32
    assert not rep["subgroups"]["available"] and not rep["per_patient"]["available"]
    text = Page((out / "report.html").read_text()).plain
    assert "carry no pneumonia subtype" in text and "carry no patient ids" in text
    assert "images are resampled" in text


@pytest.mark.slow
def test_describe_counts_patients_duplicates_and_draws_samples(tmp_path):
    root = make_chest_xray_tree(tmp_path / "data", {"train": (10, 10), "test": (4, 4)})
    first = sorted((root / "train" / "NORMAL").iterdir())[0]
    shutil.copy(first, root / "train" / "NORMAL" / "IM-9999-0001.jpeg")  # a duplicate inside train
    shutil.copy(first, root / "test" / "NORMAL" / f"copy{first.suffix}")  # and one across splits
    out = tmp_path / "describe"
    res = subprocess.run(
        [sys.executable, "-m", "pneumonia.tools.describe", f"data.root={root}", "--out", str(out), "--samples", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    desc = json.loads((out / "dataset.json").read_text())
    train, test = desc["splits"]["train"], desc["splits"]["test"]
    assert set(desc["splits"]) == {"train", "test"}
    assert train["classes"]["NORMAL"]["images"] == 11 and train["classes"]["PNEUMONIA"]["images"] == 10
    assert train["duplicates"]["groups"] == 1 and train["duplicates"]["extra_copies"] == 1
    assert desc["shared"]["train/test"]["identical_files"] == 1
    assert test["classes"]["NORMAL"]["images"] == 5
    sub = train["classes"]["PNEUMONIA"]["subtypes"]
    assert sub["bacteria"] + sub["virus"] == 10 and sub["not_in_name"] == 0
    # synthetic: every third patient has two images
    assert (
        train["classes"]["PNEUMONIA"]["patients"] < 10
        and train["classes"]["PNEUMONIA"]["patients_with_several_images"] > 0
    )
    assert set(train["modes"]) == {"L", "RGB"} and set(train["formats"]) == {"JPEG", "PNG"}
    assert 40 <= train["width"]["min"] <= train["width"]["max"] < 90
    with Image.open(out / "samples.png") as img:
        img.load()
        assert img.width > 300
    assert "train  NORMAL" in res.stdout and "byte-identical" in res.stdout
    # the old name, pneumonia.describe, still runs the command
    missing = subprocess.run(
        [sys.executable, "-m", "pneumonia.describe", "--root", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error: data.root")
    assert len(missing.stderr.strip().splitlines()) == 1
