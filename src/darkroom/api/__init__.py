"""The HTTP edge: validation, authentication, task rows and result links."""
