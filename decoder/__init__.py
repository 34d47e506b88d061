"""spqrfmt.decoder subpackage."""
