"""I/O around the model: Celery client, broker and worker inspection, event listener. Never imports Flask."""
