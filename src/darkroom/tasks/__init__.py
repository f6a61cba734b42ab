"""Tasks: the public resource, its states, and the table that is also the work queue."""
