"""The old name of `python -m pneumonia.tools.describe`, kept so that command still works."""

from pneumonia.tools.describe import main

if __name__ == "__main__":
    raise SystemExit(main())
