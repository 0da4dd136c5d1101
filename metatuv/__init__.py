"""metatuv."""
