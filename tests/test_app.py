"""app.py without a browser: scoring, limits, bad and hostile files, the threshold slider's
re-decision and operating point, the CSV, the page's handlers and the running server
(binding, password, private temp folder). tests/test_app_browser.py drives the page in
headless Chromium."""

import csv
import dataclasses
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia.app.guards import LoginGuard, LoginLimiter, UploadJanitor
from pneumonia.app.service import (
    Limits,
    Result,
    Service,
    UnreadableFile,
    UploadRejected,
    image_pixels,
    roc_point,
    validation_roc,
    wilson_interval,
)
from pneumonia.errors import ConfigError
from pneumonia.inference import Predictor
from tests.helpers import PROJECT_ROOT, compose_cfg, run_cli
from tests.helpers import write_dicom


@pytest.fixture(scope="module")
def service(tiny_checkpoint):
    return Service.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def images(xray_root):
    """Two pneumonia and two normal test images (JPEG and PNG, gray and RGB)."""
    test = xray_root / "test"
    return [*sorted((test / "PNEUMONIA").iterdir())[:2], *sorted((test / "NORMAL").iterdir())[:2]]


def png_bomb(path: Path, side: int) -> Path:
    """A valid 1-bit PNG of side x side pixels that compresses to almost nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def with_roc(service: Service, roc: dict) -> Service:
    """The service of a checkpoint whose recipe carries a validation ROC (`val_roc`)."""
    p = service.predictor
    twin = Predictor(
        p.net, p.preprocess, p.threshold, precision=p.precision, recipe=dataclasses.replace(p.recipe, val_roc=roc)
    )
    return Service(twin, service.limits)


# ---- scoring ---------------------------------------------------------------------------------
def test_scores_like_the_predictor_with_both_maps(service, tiny_checkpoint, images, tmp_path):
    dicom = write_dicom(tmp_path / "chest.dcm", np.asarray(Image.open(images[0]).convert("L")))
    paths = [*images, dicom]
    results = service.score(paths)
    p = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    expected = p.predict_files(paths)
    assert [r.name for r in results] == [Path(x).name for x in paths]
    assert all(r.ok and r.error is None for r in results)
    assert torch.equal(torch.tensor([r.probability for r in results], dtype=torch.float32), expected)
    assert [r.decision(p.threshold) for r in results] == p.decide(expected).tolist()
    assert [r.decision(p.threshold) for r in results[:4]] == [1, 1, 0, 0]  # the tiny model learned the patch
    size = p.preprocess.image_size
    for r in results:
        assert r.image.shape == (1, size, size) and r.image.dtype == np.uint8
        assert r.cams.shape == (2, size, size) and np.isfinite(r.cams).all()
        assert 0.0 <= float(r.cams.min()) and float(r.cams.max()) <= 1.0
    # the map of the decided class is the one predict.py would draw (Grad-CAM of the predicted class)
    from pneumonia.explain.gradcam import gradcam

    x = p.preprocess.to_input(torch.stack([torch.from_numpy(r.image) for r in results]))
    with p.autocast():
        maps, _ = gradcam(p.net, x, threshold=p.threshold, decisions=p.decide(expected))
    decided = np.stack([r.cams[r.decision(p.threshold)] for r in results]).astype(np.float32)
    assert np.abs(decided - maps.float().numpy()).max() < 2e-3  # float16 storage


def test_bad_and_hostile_files_become_rows_with_reasons(service, images, tmp_path, monkeypatch):
    folder = tmp_path / "upload"
    folder.mkdir()
    shutil.copy(images[0], folder / "good.jpeg")
    jpeg = next(p for p in images if p.suffix == ".jpeg").read_bytes()
    (folder / "truncated.jpeg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "text.png").write_text("this is not an image\n")
    (folder / "empty.png").write_bytes(b"")
    write_dicom(folder / "no_pixels.dcm", np.zeros((8, 8), np.uint8), pixel_data=False)
    png_bomb(folder / "bomb.png", 30000)  # 900 megapixels in ~110 kB: Pillow refuses it at open
    png_bomb(folder / "huge.png", 9000)  # 81 megapixels: under Pillow's limit, over ours (50)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700), dtype=np.uint8)).save(folder / "big.png")
    names = ["good.jpeg", "truncated.jpeg", "text.png", "empty.png", "no_pixels.dcm", "bomb.png", "huge.png", "big.png"]
    small = Service(service.predictor, Limits(max_file_mb=0.25))  # big.png is ~480 kB
    start = time.perf_counter()
    results = {r.name: r for r in small.score([folder / n for n in names])}
    assert time.perf_counter() - start < 30  # nothing was decoded at full size
    assert results["good.jpeg"].ok
    reasons = {n: r.error for n, r in results.items() if not r.ok}
    assert set(reasons) == set(names) - {"good.jpeg"}
    assert all(results[n].probability is None and results[n].cams is None for n in reasons)
    assert "truncated" in reasons["truncated.jpeg"]
    assert reasons["text.png"].startswith("not an image")
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert "has no pixel data" in reasons["no_pixels.dcm"]
    assert "too many pixels" in reasons["bomb.png"]
    assert reasons["huge.png"].startswith("image of 81 megapixels: larger than the limit of 50 megapixels")
    assert "larger than the limit of 0.25 MB (app.max_file_mb)" in reasons["big.png"]
    assert not any(str(folder) in why for why in reasons.values())  # no server paths on the page
    assert image_pixels(folder / "huge.png") == 81_000_000 and image_pixels(folder / "text.png") == 0
    monkeypatch.chdir(folder)  # a relative path, as on the command line: its reason names it once
    missing = small.score(["missing.png"])[0].error
    assert missing == "FileNotFoundError: [Errno 2] No such file or directory: 'missing.png'"
    message = small.message(list(results.values()))
    assert message.startswith("Scored 1 of 8 file(s). **7 could not be read**") and "text\\.png" in message


def test_too_many_files_is_refused_as_a_whole(service, images):
    two = Service(service.predictor, Limits(max_files=2))
    with pytest.raises(
        UploadRejected,
        match=r"3 files uploaded: this page scores at most 2 at a time "
        r"\(app.max_files=2\)",
    ):
        two.score(images[:3])
    assert len(two.score(images[:2])) == 2
    for bad in ({"max_files": 0}, {"max_file_mb": -1}, {"max_megapixels": float("inf")}, {"max_files": True}):
        with pytest.raises(ConfigError, match=f"app.{next(iter(bad))}="):
            Limits(**bad)


# ---- the threshold slider --------------------------------------------------------------------
def test_moving_the_threshold_redecides_without_running_the_model(service, images, tmp_path, monkeypatch):
    results = service.score(images)
    probs = [r.probability for r in results]

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(service.predictor, "predict_images", no_model)
    monkeypatch.setattr(service, "gradcams", no_model)
    monkeypatch.setattr(service.predictor.net, "forward", no_model)
    for t in (0.0, min(probs), 0.5, max(probs), np.nextafter(np.float32(max(probs)), np.float32(1)), 1.0):
        rows = service.table(results, t)
        assert [row["prediction"] for row in rows] == [
            "PNEUMONIA" if np.float32(p) >= np.float32(t) else "NORMAL" for p in probs
        ]
        for r in results:  # the drawn map is the decided class's, with the caption at this threshold
            img = service.overlay(r, t)
            assert img.size == (440, 440)
            assert service.caption(r, t).endswith(("PNEUMONIA", "NORMAL")[1 - r.decision(t)])
    # the highest probability itself is PNEUMONIA; just above it, NORMAL
    top = int(np.argmax(probs))
    assert results[top].decision(max(probs)) == 1
    assert results[top].decision(float(np.nextafter(np.float32(max(probs)), np.float32(1)))) == 0


def test_the_stored_validation_roc_is_used(service):
    assert service.roc is not None  # train.py stores it in best.ckpt with the threshold
    at = service.operating_point(service.predictor.threshold)
    report = service.predictor.recipe.val_report
    assert at.source == "val_roc"
    assert (at.sensitivity, at.specificity) == pytest.approx((report["recall"], report["specificity"]))


def test_operating_point_without_a_validation_roc(service):
    service = with_roc(service, None)  # a checkpoint from before val_roc: val_report at the stored threshold only
    report = service.predictor.recipe.val_report
    assert service.roc is None
    at = service.operating_point(service.predictor.threshold)
    assert at.source == "val_report"
    assert (at.sensitivity, at.specificity) == (report["recall"], report["specificity"])
    assert (at.n_pneumonia, at.n_normal) == (report["fn"] + report["tp"], report["tn"] + report["fp"])
    text = service.describe_operating_point(service.predictor.threshold)
    assert f"sensitivity **{report['recall']:.3f}**" in text and "newer version" in text
    other = service.operating_point(0.5 if abs(service.stored_threshold - 0.5) > 1e-3 else 0.3)
    assert other.sensitivity is None and other.source == "none"
    text = service.describe_operating_point(other.threshold)
    assert "not measured" in text and "trained by a newer version" in text and "re-decided" in text


def test_operating_point_read_off_the_validation_roc(service):
    roc = {
        "thresholds": [0.9, 0.7, 0.5, 0.3, 0.1],  # given in any order; the contract says ascending
        "sensitivity": [0.2, 0.6, 0.8, 0.95, 1.0],
        "specificity": [1.0, 0.97, 0.9, 0.7, 0.3],
    }
    assert validation_roc(roc)["thresholds"] == [0.1, 0.3, 0.5, 0.7, 0.9]
    svc = with_roc(service, roc)
    sorted_roc = svc.roc
    assert roc_point(sorted_roc, 0.3) == (0.3, 0.95, 0.7)  # probability >= 0.3 is PNEUMONIA
    assert roc_point(sorted_roc, 0.31) == (0.5, 0.8, 0.9)  # the same validation images as at 0.5
    assert roc_point(sorted_roc, 0.0) == (0.1, 1.0, 0.3)
    assert roc_point(sorted_roc, 0.95) == (None, 0.0, 1.0)  # no validation image scores that high
    op = svc.operating_point(0.5)
    assert (op.source, op.sensitivity, op.specificity, op.roc_threshold) == ("val_roc", 0.8, 0.9, 0.5)
    text = svc.describe_operating_point(0.5)
    assert "At threshold 0.500**, on the validation split: sensitivity **0.800**" in text
    assert "specificity **0.900**" in text and "newer version" not in text and "95% CI" in text
    assert "nearest stored ROC point above, 0.7000" in svc.describe_operating_point(0.6)
    assert "No validation image scores this high" in svc.describe_operating_point(0.95)
    for bad in (
        {"thresholds": [0.1], "sensitivity": [1.0]},
        {"thresholds": [], "sensitivity": [], "specificity": []},
        {"thresholds": [0.1, 0.2], "sensitivity": [1.0], "specificity": [0.0, 1.0]},
        {"thresholds": [0.1], "sensitivity": [1.5], "specificity": [0.0]},
        "not a dict",
    ):
        assert validation_roc(bad) is None
        assert with_roc(service, bad).operating_point(0.5).source != "val_roc"


def test_wilson_interval_known_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


# ---- the table and its CSV -------------------------------------------------------------------
def test_csv_has_every_row_and_is_safe_in_a_spreadsheet(service, tmp_path):
    cams = np.zeros((2, 4, 4), np.float16)
    results = [
        Result("a.jpeg", 0.8, image=np.zeros((1, 4, 4), np.uint8), cams=cams),
        Result("=HYPERLINK(1).png", 0.1, image=np.zeros((1, 4, 4), np.uint8), cams=cams),
        Result("b.png", error="not an image (JPEG, PNG, BMP, TIFF, WebP) nor a DICOM file"),
    ]
    path = service.write_csv(results, 0.5, tmp_path / "predictions.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "probability", "prediction", "threshold", "error"]
    assert [(r["file"], r["probability"], r["prediction"], r["threshold"]) for r in rows] == [
        ("a.jpeg", "0.800000", "PNEUMONIA", "0.500000"),
        ("'=HYPERLINK(1).png", "0.100000", "NORMAL", "0.500000"),
        ("b.png", "", "", ""),
    ]
    assert rows[2]["error"].startswith("not an image")


def test_private_copy_survives_the_shared_upload_and_refuses_links(tmp_path):
    shared = tmp_path / "abc123" / "x.jpeg"
    shared.parent.mkdir()
    shared.write_bytes(b"bytes")
    copy = Service.private_copy(shared, tmp_path / "req-1" / "0")
    shared.unlink()  # the janitor, or a second identical upload replacing it
    assert copy.read_bytes() == b"bytes" and copy.name == "x.jpeg"
    with pytest.raises(UnreadableFile, match="removed before its turn.*upload it again"):
        Service.private_copy(shared, tmp_path / "req-2")
    (tmp_path / "link.jpeg").symlink_to(copy)
    with pytest.raises(UnreadableFile, match="not a regular file"):
        Service.private_copy(tmp_path / "link.jpeg", tmp_path / "req-3")


def aged(path: Path, size: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def test_janitor_removes_expired_uploads_and_keeps_the_folder_under_its_cap(tmp_path):
    now = 1_000_000.0
    work = tmp_path / "work"
    old_upload = aged(work / "sha1" / "old.png", 10, now - 301)
    new_upload = aged(work / "sha2" / "new.png", 10, now - 10)
    stray = aged(work / "tmpabc", 10, now - 400)  # an interrupted upload's temporary file
    cached = aged(work / "sha3" / "image.jpeg", 10, now - 400)  # Gradio's cached output: keep_minutes
    busy = aged(work / "req-x" / "0" / "old.png", 10, now - 400)  # a request scoring now
    outside = aged(tmp_path / "outside.png", 10, now - 400)
    uploads = {str(old_upload), str(new_upload), str(outside)}
    janitor = UploadJanitor(work, ttl_s=300, max_bytes=1000, uploads=lambda: uploads, clock=lambda: now)
    assert sorted(janitor.sweep()) == sorted([old_upload, stray])
    assert not (work / "sha1").exists() and uploads == {str(new_upload), str(outside)}
    assert new_upload.exists() and cached.exists() and busy.exists() and outside.exists()
    # the cap: oldest first until the folder (hard links counted once, req-* aside) fits
    (work / "sha4").mkdir()
    same = work / "sha4" / "same.png"
    os.link(new_upload, same)
    newest = aged(work / "sha5" / "newest.png", 10, now - 1)
    capped = UploadJanitor(work, ttl_s=300, max_bytes=15, uploads=uploads, clock=lambda: now)
    assert capped.sweep() == [cached, new_upload, same]  # 30 bytes on disk, then 20, then 10
    assert newest.exists() and busy.exists() and uploads == {str(outside)}
    # ttl 0 and the thread: everything listed goes at the next sweep
    listed = aged(work / "sha6" / "a.png", 5, now)
    thread = UploadJanitor(work, ttl_s=0.001, max_bytes=1000, uploads={str(listed)}, interval_s=0.05).start()
    try:
        deadline = time.monotonic() + 30
        while listed.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        thread.stop()
    assert not listed.exists()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_login_limiter_locks_a_client_out_after_too_many_failures():
    clock = Clock()
    limiter = LoginLimiter(max_failures=5, window_s=60, lockout_s=300, clock=clock)
    waits = [limiter.attempt("1.2.3.4") for _ in range(200)]  # 200 wrong passwords at once
    assert waits[:5] == [0.0] * 5 and all(w == 300 for w in waits[5:6]) and all(w > 0 for w in waits[5:])
    clock.now = 299.0
    assert limiter.attempt("1.2.3.4") == pytest.approx(1.0)  # the right password too: still refused
    assert limiter.attempt("5.6.7.8") == 0.0  # other clients are not affected
    clock.now = 300.0
    assert limiter.attempt("1.2.3.4") == 0.0
    limiter.success("1.2.3.4")  # a success forgets the failures
    assert all(limiter.attempt("1.2.3.4") == 0.0 for _ in range(5)) and limiter.attempt("1.2.3.4") > 0
    clock.now = 1000.0  # failures spread over more than the window never lock out
    for _ in range(20):
        assert limiter.attempt("9.9.9.9") == 0.0
        clock.now += 13
    small = LoginLimiter(max_failures=1, clock=clock, max_clients=10)
    for i in range(100):
        small.attempt(f"10.0.0.{i}")
    assert len(small._failures) + len(small._locked_until) <= 10  # memory stays bounded


def test_login_guard_refuses_a_locked_out_client_before_the_password_check(caplog):
    import asyncio

    checked = []

    async def gradio(scope, receive, send):  # stands in for Gradio: 200 for "right", else 400
        body = (await receive())["body"]
        checked.append(body)
        await send({"type": "http.response.start", "status": 200 if body == b"right" else 400, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    clock = Clock()
    guard = LoginGuard(gradio, LoginLimiter(max_failures=3, window_s=60, lockout_s=300, clock=clock))

    async def post(password: bytes, path: str = "/login", client: str = "1.2.3.4") -> int:
        sent = []

        async def receive():
            return {"type": "http.request", "body": password, "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "client": (client, 5000)}
        await guard(scope, receive, send)
        clock.now += 0.25
        return sent[0]["status"]

    async def run():
        return (
            [await post(b"wrong") for _ in range(20)],
            await post(b"right"),
            await post(b"right", "/login/", "::1"),
            await post(b"wrong", "/config"),
            [await post(b"wrong", client=f"2001:db8::{i}") for i in range(5)],
        )

    with caplog.at_level("WARNING", logger="pneumonia.app.guards"):
        wrong, right, other, config, rotating = asyncio.run(run())
    assert wrong == [400] * 3 + [429] * 17 and right == 429 and other == 200 and config == 400
    assert rotating == [400] * 3 + [429] * 2  # addresses of one IPv6 /64 count as one client
    assert checked.count(b"wrong") == 3 + 1 + 3 and checked.count(b"right") == 1  # the locked-out never reach Gradio
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("login refused for 1.2.3.4: ")]
    assert lines[0] == "login refused for 1.2.3.4: 3 failed logins within 60 s; locked out for 300 s more"
    assert len(lines) == 5  # 18 refusals 0.25 s apart: a line a second, counting those folded into it
    assert all(line.endswith("(3 more refused since the last line)") for line in lines[1:])


# ---- the page's handlers (Gradio, no browser) ------------------------------------------------
@pytest.fixture(scope="module")
def page_module(tmp_path_factory):
    pytest.importorskip("gradio", reason="the page needs gradio: pip install -e '.[app]'")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        from pneumonia.app import page

        yield page


def uploaded(work: Path, *paths: Path) -> list[str]:
    """Copies of `paths` where Gradio puts uploads: <work>/<hash>/<name>."""
    out = []
    for i, path in enumerate(paths):
        (work / f"h{i}").mkdir(parents=True, exist_ok=True)
        out.append(shutil.copy(path, work / f"h{i}" / Path(path).name))
    return out


def requests_left(work: Path) -> list[Path]:
    return [p for p in work.iterdir() if p.name.startswith("req-")]


def test_page_scores_an_upload_from_its_own_copy_and_redecides(page_module, service, images, tmp_path):
    page = page_module
    assert page.build_page(service, tmp_path) is not None  # the Blocks build
    (tmp_path / "broken.png").write_text("not an image")
    files = uploaded(tmp_path, images[0], images[2], tmp_path / "broken.png")
    t = service.stored_threshold
    box, session, gallery, rows, csv_path, message = page.on_upload(service, tmp_path, files, t, None)
    assert box is None and all(Path(f).exists() for f in files)  # shared uploads: left to the janitor
    assert requests_left(tmp_path) == []  # this request's own copies: gone once scored
    assert len(session.results) == 3 and len(gallery) == 2
    assert gallery[0][1].startswith(f"{images[0].name}: P(pneumonia) ")
    assert [r[0] for r in rows] == [images[0].name, images[2].name, "broken.png"]
    assert re.fullmatch(r"\d\.\d{4}", rows[0][1]) and rows[0][2] == "PNEUMONIA" and rows[1][2] == "NORMAL"
    assert rows[2][1:4] == ["", "", ""] and rows[2][4].startswith("not an image")
    assert "Scored 2 of 3 file(s)" in message and "broken\\.png" in message
    assert Path(csv_path).read_text().count("\n") == 4
    # the slider: every image PNEUMONIA at 0, NORMAL just above the highest probability
    gallery, rows, csv0, point = page.on_threshold(service, tmp_path, session, 0.0)
    assert [r[2] for r in rows[:2]] == ["PNEUMONIA", "PNEUMONIA"] and "0.000" in point
    assert not Path(csv_path).exists() and Path(csv0).exists()  # one CSV per tab at a time
    top = max(r.probability for r in session.results if r.ok)
    _, rows, _, _ = page.on_threshold(service, tmp_path, session, float(np.nextafter(np.float32(top), 1)))
    assert [r[2] for r in rows[:2]] == ["NORMAL", "NORMAL"]
    # nothing uploaded yet: only the operating point changes
    skipped = page.on_threshold(service, tmp_path, None, 0.3)
    assert "At threshold 0.300" in skipped[3]
    page._forget(session)
    assert not Path(csv0).parent.exists()


def test_page_refuses_too_many_files_with_a_message(page_module, service, images, tmp_path):
    two = Service(service.predictor, Limits(max_files=2))
    files = uploaded(tmp_path, *images[:3])
    _, session, gallery, rows, csv_path, message = page_module.on_upload(two, tmp_path, files, 0.5, None)
    assert session.results == [] and gallery == [] and rows is None and csv_path is None
    assert "Nothing was scored: 3 files uploaded" in message and "at most 2" in message
    assert requests_left(tmp_path) == []


def test_identical_concurrent_uploads_all_score(page_module, service, images, tmp_path):
    """Gradio stores identical uploads at one path: 20 users sending the same X-ray at once
    all get its score (the page once deleted the shared file after the first scoring)."""
    shared = uploaded(tmp_path, images[0])
    start, out = threading.Barrier(20), [None] * 20

    def user(i: int) -> None:
        start.wait(timeout=60)
        out[i] = page_module.on_upload(service, tmp_path, list(shared), 0.5, None)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    results = [o[1].results for o in out]
    failed = [o[5] for o, r in zip(out, results) if not (len(r) == 1 and r[0].ok)]
    assert not failed, failed
    assert len({r[0].probability for r in results}) == 1 and all("Scored 1 of 1" in o[5] for o in out)
    assert requests_left(tmp_path) == [] and Path(shared[0]).exists()


# ---- configuration and the server ------------------------------------------------------------
def test_app_config_is_safe_by_default_and_checked(tiny_checkpoint, tmp_path, monkeypatch):
    from pneumonia.app.serve import check, free_port, is_loopback, parse_auth

    monkeypatch.delenv("PNEUMONIA_APP_AUTH", raising=False)
    cfg = compose_cfg("app", [f"ckpt_path={tiny_checkpoint}"], tmp_path)
    settings = check(cfg)
    assert (settings["host"], settings["port"], settings["auth"]) == ("127.0.0.1", 7860, None)
    assert settings["limits"] == Limits(20, 20, 50)
    assert [settings[k] for k in ("upload_ttl_s", "upload_dir_max_mb", "login_max_failures", "login_lockout_s")] == [
        300,
        1024,
        5,
        300,
    ]
    monkeypatch.setenv("PNEUMONIA_APP_AUTH", "ann:s3cr:et")
    assert check(compose_cfg("app", [f"ckpt_path={tiny_checkpoint}"], tmp_path))["auth"] == ("ann", "s3cr:et")
    assert parse_auth(None) is None and parse_auth("u:p") == ("u", "p")
    for override, key in (
        ("app.auth=nocolon", "app.auth"),
        ("app.auth=:pw", "app.auth"),
        ("app.port=70000", "app.port"),
        ("app.max_files=0", "app.max_files"),
        ("app.ssl_certfile=/nonexistent", "app.ssl_"),
        ("app.upload_ttl_s=0", "app.upload_ttl_s"),
        ("app.upload_dir_max_mb=100", "app.upload_dir_max_mb"),
        ("app.login_max_failures=2.5", "app.login_max_failures"),
        ("app.login_lockout_s=-1", "app.login_lockout_s"),
    ):
        with pytest.raises(ConfigError, match=re.escape(key)):
            check(compose_cfg("app", [f"ckpt_path={tiny_checkpoint}", override], tmp_path))
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert 0 < free_port("127.0.0.1") < 65536


@pytest.mark.slow
def test_cli_one_line_errors(tmp_path):
    missing = run_cli("app.py", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: ckpt_path is required")
    bad = run_cli("app.py", f"ckpt_path={tmp_path / 'none.ckpt'}", cwd=tmp_path)
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 2 and re.match(
        r"error: (ckpt_path '.*none.ckpt' does not exist|the page needs gradio)", last
    )
    assert "Traceback" not in bad.stderr


def start_app(ckpt: Path, tmp_path: Path, *overrides: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`python app.py` on a free port of 127.0.0.1, its temp folders under tmp_path; (process, url)."""
    from pneumonia.app.serve import free_port

    port = free_port("127.0.0.1")
    extra, env = env or {}, {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    env.pop("PNEUMONIA_APP_AUTH", None)
    env.update(extra)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(PROJECT_ROOT / "app.py"),
            f"ckpt_path={ckpt}",
            f"app.port={port}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *overrides,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app.py exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except urllib.error.HTTPError:  # a login page or similar: the server is up
            return proc, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("app.py did not start within 120 s")


def stop_app(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"app.py did not stop on SIGTERM: {out}") from None
    return out


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                found.add(".".join(str(b) for b in raw[::-1]) if len(raw) == 4 else raw.hex())
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_server_binds_to_loopback_asks_for_the_password_and_cleans_up(tiny_checkpoint, tmp_path):
    pytest.importorskip("gradio", reason="the page needs gradio: pip install -e '.[app]'")
    proc, url = start_app(
        tiny_checkpoint,
        tmp_path,
        "app.login_max_failures=2",
        "app.upload_ttl_s=1",
        env={"PNEUMONIA_APP_AUTH": "ann:pw"},
    )
    try:
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"}
        work = [p for p in tmp_path.iterdir() if p.name.startswith("pneumonia-app-")]
        assert len(work) == 1 and (work[0].stat().st_mode & 0o777) == 0o700  # private to this user
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url + "config", timeout=10)
        assert denied.value.code == 401
        login = urllib.request.Request(url + "login", data=b"username=ann&password=pw", method="POST")
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        assert opener.open(login, timeout=10).status == 200
        config = opener.open(url + "config", timeout=10).read().decode()
        assert '"analytics_enabled":false' in config.replace(" ", "")
        assert '"max_file_size":20971520' in config.replace(" ", "")
        # an upload never scored: the janitor removes it after app.upload_ttl_s=1
        boundary = "pneumoniatestboundary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\nnot really a png\r\n--{boundary}--\r\n"
        ).encode()
        upload = urllib.request.Request(
            url + "gradio_api/upload",
            data=body,
            method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        stored = Path(json.loads(opener.open(upload, timeout=10).read())[0])
        assert stored.parent.parent == work[0] and stored.exists()
        deadline = time.monotonic() + 60
        while stored.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not stored.exists() and not stored.parent.exists()
        codes = []  # wrong passwords: two are checked, then this address is locked out, the right one too
        for password in ("no", "no", "no", "pw"):
            try:
                login = urllib.request.Request(
                    url + "login", data=f"username=ann&password={password}".encode(), method="POST"
                )
                codes.append(opener.open(login, timeout=10).status)
            except urllib.error.HTTPError as err:
                codes.append(err.code)
                detail = err.read().decode()
        assert codes == [400, 400, 429, 429] and "Too many failed logins" in detail
        with pytest.raises(urllib.error.HTTPError) as note:  # the login page says so before anyone fails
            urllib.request.urlopen(url + "gradio_api/login_check", timeout=10)
        assert "After 2 failed logins within a minute" in note.value.read().decode()
    finally:
        out = stop_app(proc)
    assert f"at {url} " in out and "password required" in out
    assert out.count("login refused for 127.0.0.1: 2 failed logins within 60 s") == 1, out  # one a second
    assert not work[0].exists(), out  # the private folder is removed on SIGTERM


@pytest.mark.slow
def test_password_never_reaches_the_disk(tiny_checkpoint, tmp_path):
    pytest.importorskip("gradio", reason="the page needs gradio: pip install -e '.[app]'")
    proc, url = start_app(tiny_checkpoint, tmp_path, "app.auth=ann:hunter2-secret")
    out = stop_app(proc)
    assert "password required" in out and "hunter2-secret" not in out
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert written and not any("hunter2-secret" in p.read_text(errors="replace") for p in written)


def test_a_failure_inside_scoring_is_a_message_not_a_crash(page_module, service, images, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "score", broken)
    files = uploaded(tmp_path, images[0])
    _, session, gallery, rows, csv_path, message = page_module.on_upload(service, tmp_path, files, 0.5, None)
    assert session.results == [] and rows is None and requests_left(tmp_path) == []
    assert "Nothing was scored: internal error (RuntimeError" in message
