"""mvc.cli layer."""
