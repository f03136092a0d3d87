"""The Celery wiring of opsq's workers: the tasks (``fleet_tasks``, ``maintenance_tasks``),
the result backend (``backend``), the consumer and event dispatcher, live output flushing,
the ``celery multi``/beat daemons (``daemons``) and the Flower launcher (``flower``)."""
