"""Repair jobs: the same API over a Redis queue (rq, a separate worker) or an in-process thread."""
