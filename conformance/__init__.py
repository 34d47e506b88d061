"""spqrfmt.conformance subpackage."""
