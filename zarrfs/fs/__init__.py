"""The mounted tree (model) and the pyfuse3 handlers that serve it."""
