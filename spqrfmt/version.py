"""The package version (one place: the writer stamps it into every file's ``spqrfmt.writer`` metadata)."""

__version__ = "0.1.0"
