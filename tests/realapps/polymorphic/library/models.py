"""Models in the shapes real apps give their files, built on django-polymorphic.

- ``Document``: a ``PolymorphicModel`` whose default manager downcasts each row to its
  subclass; the file field lives on this multi-table parent, and ``Invoice`` and
  ``Contract`` inherit it (the example app's status and log fields, for ``--fix``).
- ``Scan``: the storage of each row's file depends on the row (``is_private``), as
  django-filer's ``MultiStorageFileField`` does: the field's own ``storage`` is only the
  public one.
"""

import os
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.db import models
from django.db.models.fields.files import FieldFile
from polymorphic.models import PolymorphicModel

public_storage = FileSystemStorage()
private_storage = FileSystemStorage(
    location=os.environ.get("PRIVATE_MEDIA_ROOT")
    or str(Path(settings.MEDIA_ROOT).parent / "private-media")
)


class Document(PolymorphicModel):
    title = models.CharField(max_length=100)
    file = models.FileField(upload_to="documents/")
    processing_status = models.CharField(max_length=20, default="ready")
    processing_log = models.TextField(blank=True)


class Invoice(Document):
    number = models.CharField(max_length=20)


class Contract(Document):
    signed_by = models.CharField(max_length=100)


class PerRowFieldFile(FieldFile):
    """The row's file on the storage its row chooses, not on the field's."""

    def __init__(self, instance, field, name):
        super().__init__(instance, field, name)
        self.storage = private_storage if instance.is_private else public_storage


class PerRowFileField(models.FileField):
    attr_class = PerRowFieldFile


class Scan(models.Model):
    title = models.CharField(max_length=100)
    is_private = models.BooleanField(default=False)
    file = PerRowFileField(upload_to="scans/", storage=public_storage)
