"""mvc.repo layer."""
