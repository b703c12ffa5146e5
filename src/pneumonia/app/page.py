"""The Gradio page around a `Service`: upload, threshold slider, heatmaps, table, CSV.

Import it after `serve.prepare_environment()` (or with GRADIO_ANALYTICS_ENABLED=False and
GRADIO_TEMP_DIR set): Gradio reads both when it builds the page. The handlers are plain
functions of the `Service` and the values the page sends (`on_upload`, `on_threshold`), so
tests call them without a server or a browser.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from pneumonia.app.guards import REQUEST_PREFIX, duration  # noqa: E402
from pneumonia.app.service import NOTE, Result, Service, UploadRejected, md_literal  # noqa: E402
from pneumonia.evaluation.predictions import FILE_NAME as PREDICTIONS_FILE  # noqa: E402

log = logging.getLogger(__name__)

TITLE = "Pneumonia on a pediatric chest X-ray: try a model"
HEADERS = ["file", "P(pneumonia)", "prediction", "threshold", "error"]  # service.TABLE_COLUMNS, for people


@dataclass
class Session:
    """What one browser tab keeps between events: the scored files and its CSV's folder."""

    results: list[Result] = field(default_factory=list)
    csv_dir: str | None = None


def _forget(session: Session | None) -> None:
    """A tab closed or expired: its CSV goes (its results, in memory, with it)."""
    if session is not None and session.csv_dir:
        shutil.rmtree(session.csv_dir, ignore_errors=True)


def _paths(files: Any) -> list[str]:
    """File paths from a `gr.File(file_count="multiple")` value (strings or file objects)."""
    if not files:
        return []
    files = files if isinstance(files, (list, tuple)) else [files]
    return [os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "path", None) or f.name for f in files]


def _internal(err: BaseException) -> str:
    return f"internal error ({md_literal(type(err).__name__)}; the server's log has the details)"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _outputs(service: Service, session: Session, threshold: float, work_dir: Path) -> tuple[Any, ...]:
    """(gallery, table, csv file) of `session` at `threshold`."""
    results = session.results
    gallery = [(service.overlay(r, threshold), service.caption(r, threshold)) for r in results if r.ok]
    rows = [
        [row["file"], _number(row["probability"]), row["prediction"], _number(row["threshold"]), row["error"]]
        for row in service.table(results, threshold)
    ]
    csv_path = None
    if results:
        if session.csv_dir:  # the previous CSV: Gradio has its own copy by now
            shutil.rmtree(session.csv_dir, ignore_errors=True)
        session.csv_dir = tempfile.mkdtemp(prefix="csv-", dir=work_dir)
        csv_path = str(service.write_csv(results, threshold, Path(session.csv_dir) / PREDICTIONS_FILE))
    return gallery, rows or None, csv_path


def on_upload(
    service: Service, work_dir: Path, files: Any, threshold: float, session: Session | None
) -> tuple[Any, ...]:
    """Score the uploaded files from this request's own copies (a `req-*` folder in
    `work_dir`, removed afterwards; the shared uploads are left to the janitor). Returns
    (files, session, gallery, table, csv, message): the upload box is emptied, the results
    shown; never raises."""
    session = session or Session()
    paths = _paths(files)
    private = None
    try:
        private = tempfile.mkdtemp(prefix=REQUEST_PREFIX, dir=work_dir)
        session.results = service.score(paths, private_dir=private)
        message = service.message(session.results)
    except UploadRejected as err:
        session.results, message = [], f"**Nothing was scored: {md_literal(err)}.**"
    except Exception as err:  # a bug, not a bad file (those are rows): keep the server up, say so
        log.error("scoring failed:\n%s", traceback.format_exc())
        session.results, message = [], f"**Nothing was scored: {_internal(err)}.**"
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
    log.info("upload: %d file(s), %d scored", len(paths), sum(r.ok for r in session.results))
    try:
        gallery, rows, csv_path = _outputs(service, session, threshold, work_dir)
    except Exception as err:
        log.error("drawing failed:\n%s", traceback.format_exc())
        return None, session, [], None, None, f"**Could not draw the results: {_internal(err)}.**"
    return None, session, gallery, rows, csv_path, message


def on_threshold(service: Service, work_dir: Path, session: Session | None, threshold: float) -> tuple[Any, ...]:
    """Re-decide the kept results at `threshold` (no model run). Returns (gallery, table,
    csv, operating point)."""
    session = session or Session()
    point = service.describe_operating_point(threshold)
    if not session.results:
        return gr.skip(), gr.skip(), gr.skip(), point
    try:
        gallery, rows, csv_path = _outputs(service, session, threshold, work_dir)
    except Exception as err:
        log.error("drawing failed:\n%s", traceback.format_exc())
        return gr.skip(), gr.skip(), gr.skip(), f"{point}\n\n**Could not redraw the results: {_internal(err)}.**"
    return gallery, rows, csv_path, point


def build_page(
    service: Service, work_dir: str | Path, *, keep_minutes: float = 60, upload_ttl_s: float = 300
) -> gr.Blocks:
    """The page. `work_dir`: the private folder Gradio uploads into (GRADIO_TEMP_DIR), where
    the CSVs are written too. Gradio deletes what it caches for display after `keep_minutes`
    (`delete_cache`); the uploads go sooner, after `upload_ttl_s`, by the janitor that
    `serve` runs on the page's `upload_file_set` (it is only named in the page's text here)."""
    work_dir = Path(work_dir)
    limits = service.limits
    stored = service.stored_threshold
    keep = max(60, int(keep_minutes * 60))
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(max(60, keep // 4), keep)) as page:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(NOTE, elem_id="note")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                files = gr.File(
                    label=f"Chest X-rays: JPEG, PNG or DICOM (up to {limits.max_files} files of "
                    f"{limits.max_file_mb:g} MB)",
                    file_count="multiple",
                    elem_id="uploads",
                )
                message = gr.Markdown(
                    f"Upload one or more images: each is scored and explained, and "
                    f"deleted from the server within {duration(upload_ttl_s)}.",
                    elem_id="message",
                )
                threshold = gr.Slider(
                    0.0,
                    1.0,
                    value=stored,
                    step=0.001,
                    elem_id="threshold",
                    label="Decision threshold: PNEUMONIA when P(pneumonia) \u2265 threshold",
                )
                reset = gr.Button(f"Back to the stored threshold ({stored:.3f})", size="sm", elem_id="reset")
                point = gr.Markdown(service.describe_operating_point(stored), elem_id="operating-point")
                with gr.Accordion("About this model", open=False):
                    gr.Markdown(service.describe_model(), elem_id="model")
            with gr.Column(scale=2):
                table = gr.Dataframe(
                    headers=HEADERS,
                    interactive=False,
                    wrap=True,
                    elem_id="results",
                    label="Results",
                    column_widths=["29%", "20%", "18%", "15%", "18%"],
                )
                csv_file = gr.File(label="The table as CSV", interactive=False, elem_id="csv")
                gr.Markdown("**Grad-CAM**: the regions behind each decision (click a picture to enlarge it)")
                gallery = gr.Gallery(
                    show_label=False,
                    columns=2,
                    fit_columns=False,
                    format="jpeg",
                    object_fit="contain",
                    height="auto",
                    preview=False,
                    elem_id="heatmaps",
                )
        session = gr.State(None, time_to_live=keep, delete_callback=_forget)

        files.upload(
            lambda f, t, s: on_upload(service, work_dir, f, t, s),
            [files, threshold, session],
            [files, session, gallery, table, csv_file, message],
            api_visibility="private",
        )
        threshold.change(
            lambda s, t: on_threshold(service, work_dir, s, t),
            [session, threshold],
            [gallery, table, csv_file, point],
            show_progress="hidden",
            api_visibility="private",
        )
        reset.click(lambda: stored, None, threshold, api_visibility="private")
    return page
