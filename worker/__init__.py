"""chatlane workers: the Celery app, the drain task and the turn pipeline."""
