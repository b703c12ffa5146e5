"""The old name of `python -m pneumonia.tools.cache`, kept so that command still works."""

from pneumonia.tools.cache import main

if __name__ == "__main__":
    raise SystemExit(main())
