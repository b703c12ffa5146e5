"""`python app.py ckpt_path=...`: a local web page to try a checkpoint on uploaded X-rays.

- `service.py`: what the page does, without Gradio or a browser (tested in CI): upload
  limits, reading files safely, scoring through the `Predictor`, Grad-CAM of both classes,
  re-deciding at another threshold, the validation operating point, the table and its CSV.
- `guards.py`: limits over time, without Gradio: the upload janitor (expiry and size cap
  of the upload folder) and the per-client login limiter (an ASGI middleware).
- `page.py`: the Gradio Blocks around a `Service` (imports gradio).
- `serve.py`: `serve(cfg)`: checks `app.*`, makes the private temp folder, turns off
  telemetry, builds the page, starts the janitor and launches it on `app.host:app.port`
  (with the login limiter when `app.auth` is set).

Importing this package imports neither torch nor gradio.
"""
