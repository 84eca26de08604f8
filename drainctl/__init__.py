"""drainctl: drain and roll out Celery workers without interrupting a task."""

__version__ = "0.1.0"
