"""mvc.lock layer."""
