"""The old name of `python -m pneumonia.tools.compare`, kept so that command still works."""

from pneumonia.tools.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
