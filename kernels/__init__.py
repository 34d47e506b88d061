"""spqrfmt.kernels subpackage."""
