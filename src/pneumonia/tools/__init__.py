"""The `python -m pneumonia.tools.<name>` commands: the top layer, above the library.
Each module parses its command line and calls library code below it; nothing in the
library imports from here."""
