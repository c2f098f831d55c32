"""Celery tasks that process uploads, checking their files first instead of crashing on them.

The incident's version opened ``data_file.file.path`` directly and died with ``[Errno 2]
No such file or directory`` halfway through a batch, leaving rows stuck in "processing"
and a traceback as the only trace. Here:

- the file's existence is checked before any work (``storage.exists``, or ``require_files``
  for a batch), so a missing file never leaves a row half-processed;
- work happens on a temporary local copy read through the storage API (``local_copy``),
  never on ``.path``, so it runs on any storage and the copies are always cleaned up;
- a missing file (``FileNotFoundError``) is handled apart from other errors: the user is
  told to re-upload, no exception escapes and no retry is wasted on it;
- ``processing_log`` holds messages for the user; details go to the worker's log;
- status moves pending → processing → done or failed (pending → failed when the file is
  missing before work starts).
"""

import logging
from contextlib import ExitStack
from pathlib import Path

from celery import shared_task
from django.core.exceptions import SuspiciousFileOperation
from volguard.django.helpers import MissingFilesError, local_copy, require_files

from .models import UserDataFile

logger = logging.getLogger(__name__)

Status = UserDataFile.Status

#: What the user reads when their file is gone; ``check_missing_files --fix`` writes the same.
MISSING_FILE_MESSAGE = "File missing from storage. Please re-upload your file."
#: What the user reads when processing broke on our side (the traceback goes to the log).
FAILED_MESSAGE = "Processing failed because of an error on our side. Please try again later."


@shared_task
def process_data_file(file_id: int) -> str:
    """Process one uploaded file; return its final status (``"gone"`` if the row is gone)."""
    try:
        data_file = UserDataFile.objects.get(pk=file_id)
    except UserDataFile.DoesNotExist:
        logger.warning("UserDataFile %s was deleted before it could be processed", file_id)
        return "gone"

    if not _in_storage(data_file):
        _mark_missing(data_file, "not in storage before processing")
        return data_file.processing_status

    _set_status(data_file, Status.PROCESSING, "Processing your file…")
    try:
        with local_copy(data_file.file) as path:
            summary = _summarise(path)
    except FileNotFoundError as e:
        # Gone between the check and the copy: deleted, or a volume swapped underneath.
        _mark_missing(data_file, str(e))
    except Exception:
        # A bug or an outage on our side: tell the user, and let Celery see the error.
        _set_status(data_file, Status.FAILED, FAILED_MESSAGE)
        raise
    else:
        _set_status(data_file, Status.DONE, summary)
    return data_file.processing_status


@shared_task
def process_all_user_files(user_id: int) -> dict[str, list[int]]:
    """Process every file of one user in one batch; a missing file does not stop the others.

    ``require_files`` names all missing files before any work starts; those rows are marked
    failed with the re-upload message and the rest are processed. Returns the ids that
    ended ``done`` and those found ``missing``.
    """
    files = UserDataFile.objects.filter(owner_id=user_id).order_by("pk")
    missing_ids: set[int] = set()
    try:
        require_files(files)
    except MissingFilesError as e:
        logger.warning("User %s: %s", user_id, e)
        missing_ids = {pk for pk, _ in e.missing}

    missing: list[int] = []
    batch: list[UserDataFile] = []
    for data_file in files:
        if data_file.pk in missing_ids:
            _mark_missing(data_file, "not in storage before processing")
            missing.append(data_file.pk)
        else:
            _set_status(data_file, Status.PROCESSING, "Processing your file…")
            batch.append(data_file)

    copied: list[tuple[UserDataFile, Path]] = []
    try:
        with ExitStack() as copies:
            for data_file in batch:
                try:
                    copied.append((data_file, copies.enter_context(local_copy(data_file.file))))
                except FileNotFoundError as e:  # vanished since the preflight
                    _mark_missing(data_file, str(e))
                    missing.append(data_file.pk)
            summaries = _call_user_batch_processor(user_id, [path for _, path in copied])
    except Exception:
        for data_file, _ in copied:
            _set_status(data_file, Status.FAILED, FAILED_MESSAGE)
        raise

    for (data_file, _), summary in zip(copied, summaries, strict=True):
        _set_status(data_file, Status.DONE, summary)
    return {"done": [data_file.pk for data_file, _ in copied], "missing": sorted(missing)}


def _call_user_batch_processor(user_id: int, paths: list[Path]) -> list[str]:
    """Run the user's batch processor on local files; one user-facing summary per path.

    Like the external tool it stands for, it wants real paths: callers pass the temporary
    copies from ``local_copy``, never ``FieldFile.path``, which only exists on the Machine
    whose volume holds the file.
    """
    logger.info("Processing %d file(s) for user %s", len(paths), user_id)
    return [_summarise(path) for path in paths]


# -- helpers ------------------------------------------------------------------------------


def _summarise(path: Path) -> str:
    """The stand-in for real processing: count the file's bytes and lines."""
    size = lines = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            size += len(chunk)
            lines += chunk.count(b"\n")
    return f"Processed: {lines} lines, {size} bytes."


def _in_storage(data_file: UserDataFile) -> bool:
    name = data_file.file.name
    if not name:
        return False
    try:
        return data_file.file.storage.exists(name)
    except SuspiciousFileOperation:  # a name escaping the storage root is never followed
        return False


def _mark_missing(data_file: UserDataFile, detail: str) -> None:
    logger.warning(
        "UserDataFile %s (%r) is missing from storage: %s",
        data_file.pk,
        data_file.file.name,
        detail,
    )
    _set_status(data_file, Status.FAILED, MISSING_FILE_MESSAGE)


def _set_status(data_file: UserDataFile, status: str, message: str) -> None:
    data_file.processing_status = status
    data_file.processing_log = message
    data_file.save(update_fields=["processing_status", "processing_log", "updated_at"])
