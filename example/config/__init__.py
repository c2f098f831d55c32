"""The example project's configuration package.

Loading the Celery app here (Celery's documented Django layout) makes ``@shared_task``
bind to it whenever Django starts, in the web process as in the worker.
"""

from .celery import app as celery_app

__all__ = ["celery_app"]
