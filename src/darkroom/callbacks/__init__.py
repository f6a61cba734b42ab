"""Callbacks: HTTPS notifications of a task's end to the URL its client gave."""
