"""`python serve.py ckpt_path=...` (or `model_path=<model.onnx>`): an HTTP API for other programs.

- `settings.py`: `ServeSettings`, the `serve.*` values, declared in its signature and checked
  before torch is imported (`runners.quick`).
- `api.py`: `PneumoniaAPI`, LitServe's `LitAPI` around the one scorer of `predict.py`
  (`runners.predict.open_scorer`: the checkpoint's `Predictor` or the export's `OnnxPredictor`):
  request bodies (multipart file or base64 JSON) decoded with the preset under the pixel
  limit, batches scored, JSON answers.
- `guard.py`: an ASGI middleware in front of LitServe: the API key (401) and the body size
  limit (413), with one-line JSON errors.
- `server.py`: `serve(cfg)`: the above assembled and run on `serve.host:serve.port`.

Importing this package imports neither torch nor litserve.
"""
