"""mvc.store layer."""
