"""The incident's model: a user's uploaded data file and where its processing stands."""

from django.conf import settings
from django.db import models
from django.utils import timezone


def user_directory_path(instance: "UserDataFile", filename: str) -> str:
    """``user_data/user_<owner id>/<YYYY>/<MM>/<DD>/<filename>``, dated at upload (UTC).

    A callable ``upload_to`` gets no strftime expansion, so the date is formatted here.
    """
    return f"user_data/user_{instance.owner_id}/{timezone.now():%Y/%m/%d}/{filename}"


class UserDataFile(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="data_files"
    )
    file = models.FileField(upload_to=user_directory_path, max_length=255)
    processing_status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PENDING
    )
    # Shown to the user: say what happened and what to do, never a traceback.
    processing_log = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.file.name} ({self.processing_status})"
