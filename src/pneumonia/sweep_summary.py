"""The old name of `python -m pneumonia.tools.sweep_summary`, kept so that command still works."""

from pneumonia.tools.sweep_summary import main

if __name__ == "__main__":
    main()
