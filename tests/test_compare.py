"""python -m pneumonia.tools.compare: McNemar, DeLong and paired bootstrap differences of two eval
(or labelled predict) runs on the same images, and a one-line refusal for different images;
predictions.csv's two layouts (evaluation/predictions.py)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from pneumonia import CLASSES
from pneumonia.evaluation import statistics as st
from pneumonia.evaluation.predictions import PREDICT_COLUMNS, PredictionsError, predict_row, read_predictions
from pneumonia.runners.eval import evaluate
from pneumonia.runners.predict import predict
from pneumonia.tools.compare import CompareError, compare, main
from tests.helpers import PROJECT_ROOT, compose_cfg


def write_predictions(folder, paths, labels, probs, threshold):
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "probability", "prediction"])
        for p, y, q in zip(paths, labels, probs):
            w.writerow([p, y, f"{q:.6f}", int(q >= threshold)])
    return folder


def write_predict_predictions(folder, paths, labels, probs, threshold):
    """predictions.csv as predict.py writes it: class names, the threshold on every row."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PREDICT_COLUMNS)
        for p, y, q in zip(paths, labels, probs):
            w.writerow(predict_row(p, q, CLASSES[int(q >= threshold)], threshold, "" if y is None else CLASSES[y]))
    return folder


@pytest.fixture()
def pair_of_runs(tmp_path):
    rng = np.random.default_rng(0)
    paths = [f"/data/test/NORMAL/IM-{i // 2:04d}-000{i % 2}.jpeg" for i in range(80)] + [
        f"/data/test/PNEUMONIA/person{i // 2}_{'bacteria' if i % 3 else 'virus'}_{i}.jpeg" for i in range(120)
    ]
    labels = np.r_[np.zeros(80, int), np.ones(120, int)]
    a = 1 / (1 + np.exp(-rng.normal(1.2 * (2 * labels - 1), 1.0)))
    b = 1 / (1 + np.exp(-rng.normal(1.8 * (2 * labels - 1), 1.0)))
    return (
        write_predictions(tmp_path / "a", paths, labels, a, 0.5),
        write_predictions(tmp_path / "b", paths, labels, b, 0.4),
        paths,
        labels,
        a,
        b,
    )


def test_compare_counts_tests_and_differences(pair_of_runs):
    dir_a, dir_b, paths, labels, a, b = pair_of_runs
    a, b = np.round(a, 6), np.round(b, 6)  # as the CSV holds them
    res = compare(dir_a, dir_b, resamples=500)
    right_a, right_b = (a >= 0.5) == labels, (b >= 0.4) == labels
    mc = res["mcnemar"]
    assert (mc["b"], mc["c"]) == (int((right_a & ~right_b).sum()), int((~right_a & right_b).sum()))
    assert mc["b"] + mc["c"] + mc["both_right"] + mc["both_wrong"] == 200
    assert mc["p_value"] == pytest.approx(st.mcnemar_test(mc["b"], mc["c"])["p_value"])
    assert res["delong"]["difference"] == pytest.approx(st.auroc(b, labels) - st.auroc(a, labels))
    for m in st.METRICS:
        r = res["metrics"][m]
        assert r["difference"] == pytest.approx(r["b"] - r["a"])
        assert r["ci95"][0] <= r["difference"] <= r["ci95"][1]
    assert res["metrics"]["accuracy"]["a"] == pytest.approx(right_a.mean())
    assert res["bootstrap"]["unit"] == "patient" and res["bootstrap"]["units"] == 40 + 60
    assert res["matched_by"] == "path"


def test_a_model_against_itself_differs_by_nothing(pair_of_runs):
    dir_a = pair_of_runs[0]
    res = compare(dir_a, dir_a, resamples=200)
    assert res["mcnemar"]["b"] == res["mcnemar"]["c"] == 0 and res["mcnemar"]["p_value"] == 1.0
    assert all(res["metrics"][m]["ci95"] == [0.0, 0.0] for m in st.METRICS)
    assert res["delong"]["p_value"] == 1.0


def test_refuses_different_images_in_one_line(pair_of_runs, tmp_path, capsys):
    dir_a, _, paths, labels, a, _ = pair_of_runs
    other = write_predictions(
        tmp_path / "other", paths[:-1] + ["/data/test/PNEUMONIA/person999_virus_1.jpeg"], labels, a, 0.5
    )
    with pytest.raises(CompareError, match="different images .*1 only in A, 1 only in B"):
        compare(dir_a, other)
    assert main([str(dir_a), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: A and B were scored on different images") and "\n" not in err
    fewer = write_predictions(tmp_path / "fewer", paths[:50], labels[:50], a[:50], 0.5)
    with pytest.raises(CompareError, match="150 only in A, 0 only in B"):
        compare(dir_a, fewer)
    with pytest.raises(CompareError, match="no predictions.csv"):
        compare(dir_a, tmp_path / "nowhere")


def test_the_same_images_under_another_root_pair_by_class_and_name(pair_of_runs, tmp_path):
    dir_a, _, paths, labels, _, b = pair_of_runs
    moved = write_predictions(
        tmp_path / "moved", [p.replace("/data/", "/elsewhere/chest_xray/") for p in paths], labels, b, 0.4
    )
    res = compare(dir_a, moved, resamples=100)
    assert res["matched_by"] == "class folder and file name" and res["images"] == 200
    relabelled = write_predictions(tmp_path / "relabelled", paths, 1 - labels, b, 0.4)
    with pytest.raises(CompareError, match="disagree on the label of 200"):
        compare(dir_a, relabelled)


@pytest.mark.slow
def test_two_real_eval_runs_compared_from_the_command_line(tiny_checkpoint, xray_root, tmp_path):
    runs = []
    for name, extra in (("stored", []), ("half", ["threshold=0.5"])):
        out = tmp_path / name
        evaluate(
            compose_cfg(
                "eval",
                [
                    f"ckpt_path={tiny_checkpoint}",
                    "trainer.accelerator=cpu",
                    f"data.root={xray_root}",
                    f"data.cache_dir={tmp_path / 'cache'}",
                    "logger=none",
                    "gallery_size=0",
                    "describe=false",
                    "intervals.resamples=200",
                    "trainer.enable_progress_bar=false",
                    *extra,
                ],
                out,
            )
        )
        runs.append(out)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumonia.tools.compare",
            str(runs[0]),
            str(runs[1]),
            "--resamples",
            "300",
            "--out",
            str(tmp_path / "cmp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "McNemar on the decisions" in res.stdout and "DeLong on AUROC" in res.stdout
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["images"] == 32 and saved["delong"]["difference"] == pytest.approx(0.0)  # same scores
    assert saved["metrics"]["auroc"]["ci95"] == [0.0, 0.0]


def test_a_predict_folder_compares_as_its_eval_folder(pair_of_runs, tmp_path, capsys):
    """predict.py's layout (class names, a threshold column) gives the same comparison as
    eval.py's; without labels, one line saying why."""
    dir_a, dir_b, paths, labels, a, b = pair_of_runs
    as_predict = write_predict_predictions(tmp_path / "predict_b", paths, labels, b, 0.4)
    assert read_predictions(as_predict)[0] == "predict/1" and read_predictions(dir_b)[0] == "eval/1"
    rows = read_predictions(as_predict)[1]
    assert rows[0].threshold == pytest.approx(0.4) and {r.label for r in rows} == {0, 1}
    assert compare(dir_a, as_predict, resamples=200) == {**compare(dir_a, dir_b, resamples=200), "b": str(as_predict)}
    assert main([str(dir_a), str(as_predict)]) == 0 and "McNemar" in capsys.readouterr().out
    unlabelled = write_predict_predictions(tmp_path / "unlabelled", paths, [None] * len(paths), b, 0.4)
    assert main([str(dir_a), str(unlabelled)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "200 image(s) without a label" in err and "\n" not in err


def test_a_csv_of_neither_layout_is_one_line(tmp_path):
    (tmp_path / "predictions.csv").write_text("file,probability,prediction,threshold,error\nx.png,0.5,NORMAL,0.5,\n")
    with pytest.raises(PredictionsError, match="not a predictions.csv of eval.py .* or predict.py"):
        read_predictions(tmp_path)
    with pytest.raises(CompareError, match="has the columns file, probability"):
        compare(tmp_path, tmp_path)


@pytest.mark.slow
def test_real_eval_and_predict_runs_of_one_checkpoint_compare(tiny_checkpoint, xray_root, tmp_path):
    """The same checkpoint through eval.py and predict.py: the same images, the same decisions."""
    evaluate(
        compose_cfg(
            "eval",
            [
                f"ckpt_path={tiny_checkpoint}",
                "trainer.accelerator=cpu",
                f"data.root={xray_root}",
                f"data.cache_dir={tmp_path / 'cache'}",
                "logger=none",
                "gallery_size=0",
                "describe=false",
                "intervals.resamples=0",
                "trainer.enable_progress_bar=false",
            ],
            tmp_path / "eval",
        )
    )
    predict(
        compose_cfg(
            "predict",
            [f"ckpt_path={tiny_checkpoint}", f"inputs={xray_root / 'test'}", "device=cpu"],
            tmp_path / "predict",
        )
    )
    res = compare(tmp_path / "eval", tmp_path / "predict", resamples=100)
    assert res["images"] == 32
    assert res["mcnemar"]["b"] == res["mcnemar"]["c"] == 0
    assert res["delong"]["difference"] == pytest.approx(0.0, abs=1e-4)
