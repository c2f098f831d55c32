"""`FallbackStorage`: one Django storage over two, for the cutover to object storage.

Configured in ``STORAGES`` over two other entries — the object store (primary) and the volume
(fallback)::

    STORAGES = {
        "default": {
            "BACKEND": "volguard.django.storage.FallbackStorage",
            "OPTIONS": {"primary": "bucket", "fallback": "volume"},
        },
        "bucket": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {...}},
        "volume": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {...},
    }

Reads (``open()`` for reading, ``exists()``, ``size()``, the times, ``url()``) try the
primary, then the fallback; writes go to the primary. So Machines already switched and
Machines not yet switched run side by side with no 404: a file ``migrate_media`` has not
copied yet is read from the volume. Once the migration verifies, drop the fallback (set
``default`` to the object store).

Decisions where a choice was needed:

- ``url(name)``: the URL of wherever the file is (the primary's when it has it, else the
  fallback's when it has it, else the primary's): one existence check per call, the price
  of no 404 during the cutover.
- ``delete(name)``: deletes from the primary only. volguard never deletes files from the
  volume: that is the operator's decision once the migration has verified. A file that is
  only on the fallback is therefore still there (and still read) after a ``delete``.
- A new name is free only when neither storage has it (``get_available_name`` asks
  `exists`), so an upload never shadows a not-yet-copied file of the same name.
- ``path()``, ``listdir()`` and the rest go to the primary (``listdir`` merges both).
"""

from __future__ import annotations

from typing import IO, Any

from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import Storage
from django.utils.deconstruct import deconstructible


@deconstructible(path="volguard.django.storage.FallbackStorage")
class FallbackStorage(Storage):
    """Reads from ``primary`` then ``fallback`` (aliases of ``STORAGES``); writes to
    ``primary``. See the module docstring."""

    def __init__(self, primary: str = "", fallback: str = "") -> None:
        if not primary or not fallback or primary == fallback:
            raise ImproperlyConfigured(
                "FallbackStorage needs OPTIONS {'primary': <alias>, 'fallback': <alias>}, "
                "two different entries of STORAGES"
            )
        self.primary_alias = primary
        self.fallback_alias = fallback

    # The two storages are looked up on first use: STORAGES may list this one first.
    @property
    def primary(self) -> Storage:
        return self._resolve(self.primary_alias)

    @property
    def fallback(self) -> Storage:
        return self._resolve(self.fallback_alias)

    def _resolve(self, alias: str) -> Storage:
        from django.core.files.storage import storages

        storage = storages[alias]
        if isinstance(storage, FallbackStorage):
            raise ImproperlyConfigured(f"FallbackStorage over {alias!r}, another FallbackStorage")
        return storage

    def _either(self, name: str, method: str, *args: Any) -> Any:
        try:
            return getattr(self.primary, method)(name, *args)
        except FileNotFoundError:
            return getattr(self.fallback, method)(name, *args)

    # -- reads: primary, then fallback ------------------------------------------------------

    def _open(self, name: str, mode: str = "rb") -> IO[Any]:
        if any(c in mode for c in "wax+"):
            return self.primary.open(name, mode)
        return self._either(name, "open", mode)

    def exists(self, name: str) -> bool:
        return self.primary.exists(name) or self.fallback.exists(name)

    def size(self, name: str) -> int:
        return self._either(name, "size")

    def get_modified_time(self, name: str) -> Any:
        return self._either(name, "get_modified_time")

    def get_accessed_time(self, name: str) -> Any:
        return self._either(name, "get_accessed_time")

    def get_created_time(self, name: str) -> Any:
        return self._either(name, "get_created_time")

    def url(self, name: str | None) -> str:
        if name and not self.primary.exists(name) and self.fallback.exists(name):
            return self.fallback.url(name)
        return self.primary.url(name)

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        directories: dict[str, None] = {}
        files: dict[str, None] = {}
        for storage in (self.primary, self.fallback):
            try:
                found_dirs, found_files = storage.listdir(path)
            except FileNotFoundError:
                continue
            directories.update(dict.fromkeys(found_dirs))
            files.update(dict.fromkeys(found_files))
        return list(directories), list(files)

    # -- writes: primary only ---------------------------------------------------------------

    def _save(self, name: str, content: Any) -> str:
        # `save` chose ``name`` free on both storages (get_available_name asks `exists`).
        return self.primary._save(name, content)

    def delete(self, name: str) -> None:
        self.primary.delete(name)

    def path(self, name: str) -> str:
        return self.primary.path(name)

    def get_valid_name(self, name: str) -> str:
        return self.primary.get_valid_name(name)

    def get_alternative_name(self, file_root: str, file_ext: str) -> str:
        return self.primary.get_alternative_name(file_root, file_ext)

    def generate_filename(self, filename: str) -> str:
        return self.primary.generate_filename(filename)
