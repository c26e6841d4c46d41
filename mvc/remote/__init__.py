"""mvc.remote layer."""
