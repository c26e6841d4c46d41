"""mvc.formats layer."""
