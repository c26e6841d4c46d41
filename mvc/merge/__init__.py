"""mvc.merge layer."""
