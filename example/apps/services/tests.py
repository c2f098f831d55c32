"""The example app's tests: ``python manage.py test apps.services``.

tests/test_example_app.py runs them on SQLite and on PostgreSQL. Tasks are sent with
``.delay()`` and run eagerly (CELERY_TASK_ALWAYS_EAGER, the default with the ``memory://``
broker) with eager propagation on, so an exception escaping a task fails the test.
"""

import re
import shutil
import tempfile
from pathlib import Path
from unittest import mock

from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import SimpleTestCase, TestCase, override_settings
from django.utils import timezone

from config import celery_app
from config.settings import database_from_url

from . import tasks
from .models import UserDataFile

Status = UserDataFile.Status


class MediaTestCase(TestCase):
    """Each test gets its own MEDIA_ROOT and its own temporary directory.

    A private ``tempfile.tempdir`` makes "every temporary copy was removed" exact: nothing
    else writes there while the test runs.
    """

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        if not celery_app.conf.task_always_eager:
            raise ImproperlyConfigured(
                "these tests run Celery tasks eagerly: set CELERY_TASK_ALWAYS_EAGER=1 "
                "or leave CELERY_BROKER_URL at memory://"
            )

    def setUp(self) -> None:
        media = tempfile.mkdtemp(prefix="media-")
        self.addCleanup(shutil.rmtree, media, ignore_errors=True)
        media_override = override_settings(MEDIA_ROOT=media)
        media_override.enable()
        self.addCleanup(media_override.disable)

        self.tmp = Path(tempfile.mkdtemp(prefix="tmp-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        tmp_patch = mock.patch.object(tempfile, "tempdir", str(self.tmp))
        tmp_patch.start()
        self.addCleanup(tmp_patch.stop)

        self.user = User.objects.create_user("alice")

    def upload(self, name: str = "data.csv", content: bytes = b"a,b\n1,2\n", user=None):
        data_file = UserDataFile(owner=user or self.user)
        data_file.file.save(name, ContentFile(content), save=True)
        return data_file

    def temp_files(self) -> list[Path]:
        return sorted(self.tmp.iterdir())


class UploadPathTests(MediaTestCase):
    def test_upload_goes_to_the_users_dated_directory(self) -> None:
        data_file = self.upload("report.csv")

        today = timezone.now()
        self.assertEqual(
            data_file.file.name,
            f"user_data/user_{self.user.pk}/{today:%Y/%m/%d}/report.csv",
        )
        self.assertRegex(data_file.file.name, r"^user_data/user_\d+/\d{4}/\d{2}/\d{2}/[^/]+$")
        self.assertTrue(default_storage.exists(data_file.file.name))
        self.assertEqual(data_file.processing_status, Status.PENDING)
        self.assertEqual(data_file.processing_log, "")

    def test_a_second_upload_with_the_same_name_gets_its_own_file(self) -> None:
        first, second = self.upload("same.csv"), self.upload("same.csv")
        self.assertNotEqual(first.file.name, second.file.name)
        self.assertTrue(re.match(r"^user_data/user_\d+/", second.file.name))


class ProcessDataFileTests(MediaTestCase):
    def test_happy_path_marks_done_writes_the_log_and_removes_the_copy(self) -> None:
        data_file = self.upload(content=b"x,y\n1,2\n3,4\n")
        before = self.temp_files()
        seen: list[tuple[Path, bool]] = []
        real_summarise = tasks._summarise

        def summarise(path: Path) -> str:
            seen.append((path, path.is_file()))
            return real_summarise(path)

        with mock.patch.object(tasks, "_summarise", summarise):
            result = tasks.process_data_file.delay(data_file.pk)

        data_file.refresh_from_db()
        self.assertEqual(result.get(), Status.DONE)
        self.assertEqual(data_file.processing_status, Status.DONE)
        self.assertEqual(data_file.processing_log, "Processed: 3 lines, 12 bytes.")
        # It worked on a temporary copy (not the file in MEDIA_ROOT), which is gone now.
        [(path, existed)] = seen
        self.assertTrue(existed)
        self.assertEqual(path.parent, self.tmp)
        self.assertEqual(path.suffix, ".csv")
        self.assertEqual(self.temp_files(), before)
        self.assertTrue(default_storage.exists(data_file.file.name))  # the upload is kept

    def test_status_is_processing_while_the_work_runs(self) -> None:
        data_file = self.upload()
        statuses: list[str] = []

        def summarise(path: Path) -> str:
            statuses.append(UserDataFile.objects.get(pk=data_file.pk).processing_status)
            return "ok"

        with mock.patch.object(tasks, "_summarise", summarise):
            tasks.process_data_file.delay(data_file.pk)
        self.assertEqual(statuses, [Status.PROCESSING])

    def test_missing_file_fails_with_the_user_message_and_no_exception(self) -> None:
        data_file = self.upload()
        default_storage.delete(data_file.file.name)

        with self.assertLogs("apps.services.tasks", "WARNING"):
            result = tasks.process_data_file.delay(data_file.pk)

        data_file.refresh_from_db()
        self.assertEqual(result.get(), Status.FAILED)
        self.assertEqual(data_file.processing_status, Status.FAILED)
        self.assertEqual(
            data_file.processing_log, "File missing from storage. Please re-upload your file."
        )
        self.assertEqual(self.temp_files(), [])

    def test_file_vanishing_after_the_check_is_still_a_missing_file(self) -> None:
        data_file = self.upload()
        default_storage.delete(data_file.file.name)

        with (
            mock.patch.object(tasks, "_in_storage", return_value=True),
            self.assertLogs("apps.services.tasks", "WARNING"),
        ):
            tasks.process_data_file.delay(data_file.pk)

        data_file.refresh_from_db()
        self.assertEqual(data_file.processing_status, Status.FAILED)
        self.assertEqual(data_file.processing_log, tasks.MISSING_FILE_MESSAGE)

    def test_empty_file_field_is_a_missing_file(self) -> None:
        data_file = UserDataFile.objects.create(owner=self.user, file="")
        with self.assertLogs("apps.services.tasks", "WARNING"):
            tasks.process_data_file.delay(data_file.pk)
        data_file.refresh_from_db()
        self.assertEqual(data_file.processing_status, Status.FAILED)
        self.assertEqual(data_file.processing_log, tasks.MISSING_FILE_MESSAGE)

    def test_name_escaping_the_media_root_is_missing_and_never_followed(self) -> None:
        data_file = UserDataFile.objects.create(owner=self.user, file="../../etc/passwd")
        with self.assertLogs("apps.services.tasks", "WARNING"):
            tasks.process_data_file.delay(data_file.pk)
        data_file.refresh_from_db()
        self.assertEqual(data_file.processing_status, Status.FAILED)
        self.assertEqual(data_file.processing_log, tasks.MISSING_FILE_MESSAGE)

    def test_a_bug_in_processing_fails_the_row_with_a_user_message_and_reraises(self) -> None:
        data_file = self.upload()
        with (
            mock.patch.object(tasks, "_summarise", side_effect=RuntimeError("parser bug")),
            self.assertRaisesMessage(RuntimeError, "parser bug"),
        ):
            tasks.process_data_file.delay(data_file.pk)

        data_file.refresh_from_db()
        self.assertEqual(data_file.processing_status, Status.FAILED)
        self.assertEqual(data_file.processing_log, tasks.FAILED_MESSAGE)
        self.assertNotIn("parser bug", data_file.processing_log)
        self.assertEqual(self.temp_files(), [])

    def test_deleted_row_is_not_an_error(self) -> None:
        with self.assertLogs("apps.services.tasks", "WARNING"):
            self.assertEqual(tasks.process_data_file.delay(987654).get(), "gone")


class ProcessAllUserFilesTests(MediaTestCase):
    def test_one_missing_file_does_not_stop_the_others(self) -> None:
        first = self.upload("a.csv", b"1\n")
        lost = self.upload("b.csv", b"2\n2\n")
        third = self.upload("c.txt", b"3\n3\n3\n")
        someone_else = self.upload("d.csv", user=User.objects.create_user("bob"))
        default_storage.delete(lost.file.name)
        batches: list[list[tuple[Path, bool]]] = []
        real = tasks._call_user_batch_processor

        def processor(user_id: int, paths: list[Path]) -> list[str]:
            batches.append([(p, p.is_file()) for p in paths])
            return real(user_id, paths)

        with (
            mock.patch.object(tasks, "_call_user_batch_processor", processor),
            self.assertLogs("apps.services.tasks", "WARNING") as logs,
        ):
            result = tasks.process_all_user_files.delay(self.user.pk).get()

        self.assertEqual(result, {"done": [first.pk, third.pk], "missing": [lost.pk]})
        for row in (first, lost, third, someone_else):
            row.refresh_from_db()
        self.assertEqual(
            (first.processing_status, first.processing_log),
            (Status.DONE, "Processed: 1 lines, 2 bytes."),
        )
        self.assertEqual(
            (third.processing_status, third.processing_log),
            (Status.DONE, "Processed: 3 lines, 6 bytes."),
        )
        self.assertEqual(
            (lost.processing_status, lost.processing_log),
            (Status.FAILED, "File missing from storage. Please re-upload your file."),
        )
        self.assertEqual(someone_else.processing_status, Status.PENDING)
        # One batch, of temporary copies that existed during it and are all gone after.
        [batch] = batches
        self.assertEqual([p.suffix for p, _ in batch], [".csv", ".txt"])
        self.assertTrue(all(existed and p.parent == self.tmp for p, existed in batch))
        self.assertEqual(self.temp_files(), [])
        self.assertIn(f"id {lost.pk} ('{lost.file.name}')", "\n".join(logs.output))

    def test_all_present_processes_everything(self) -> None:
        rows = [self.upload(f"f{i}.csv", b"x\n" * i) for i in range(1, 4)]
        result = tasks.process_all_user_files.delay(self.user.pk).get()
        self.assertEqual(result, {"done": [r.pk for r in rows], "missing": []})
        self.assertEqual(
            list(
                UserDataFile.objects.filter(owner=self.user)
                .order_by("pk")
                .values_list("processing_status", flat=True)
            ),
            [Status.DONE] * 3,
        )
        self.assertEqual(self.temp_files(), [])

    def test_a_failing_batch_marks_its_rows_failed_and_removes_the_copies(self) -> None:
        rows = [self.upload(f"f{i}.csv") for i in range(2)]
        with (
            mock.patch.object(
                tasks, "_call_user_batch_processor", side_effect=RuntimeError("processor down")
            ),
            self.assertRaisesMessage(RuntimeError, "processor down"),
        ):
            tasks.process_all_user_files.delay(self.user.pk)
        for row in rows:
            row.refresh_from_db()
            self.assertEqual(
                (row.processing_status, row.processing_log), (Status.FAILED, tasks.FAILED_MESSAGE)
            )
        self.assertEqual(self.temp_files(), [])


class DatabaseUrlTests(SimpleTestCase):
    def test_postgres_url(self) -> None:
        self.assertEqual(
            database_from_url("postgres://app:p%40ss%2Fw@db.internal:5433/my_db?sslmode=disable"),
            {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "my_db",
                "USER": "app",
                "PASSWORD": "p@ss/w",
                "HOST": "db.internal",
                "PORT": "5433",
                "OPTIONS": {"sslmode": "disable"},
            },
        )

    def test_sqlite_urls(self) -> None:
        absolute = database_from_url("sqlite:////var/data/db.sqlite3")
        self.assertEqual(absolute["ENGINE"], "django.db.backends.sqlite3")
        self.assertEqual(str(absolute["NAME"]), "/var/data/db.sqlite3")
        relative = database_from_url("sqlite:///db.sqlite3")
        self.assertTrue(Path(relative["NAME"]).is_absolute())
        self.assertEqual(Path(relative["NAME"]).name, "db.sqlite3")

    def test_unsupported_scheme_is_a_configuration_error(self) -> None:
        with self.assertRaises(ImproperlyConfigured):
            database_from_url("mysql://db/app")
