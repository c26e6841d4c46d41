"""mvc.lineage layer."""
