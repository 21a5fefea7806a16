"""The live side: Celery events in (listener), applied on one path (sink), fanned out (hub), with the stream's
status and gaps (stream), periodic jobs (jobs), resync after a gap (resync) and counters (stats), run by the
monitor's threads (monitor)."""
