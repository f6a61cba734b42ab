"""Content moderation: a prompt screen at submit (always), an image check in the worker."""
