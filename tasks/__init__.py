"""Celery task wrappers: ids in, one domain or worker call, retried with backoff on transient errors."""
