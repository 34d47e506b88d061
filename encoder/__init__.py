"""spqrfmt.encoder subpackage."""
