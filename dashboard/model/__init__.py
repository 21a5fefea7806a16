"""Pure decision logic: standard library only, no I/O, no Flask, no Celery."""
