import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "muxer_project.settings")

app = Celery("muxer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
