"""Which file fields an audit walks, and each model's settings: discovery and configuration.

`discover` finds every model's FileFields (or ImageFields, …) — or those named by
``app.Model[.field]`` labels — as `Target` objects, each with its model's `ModelConfig`
read from settings (every key optional; the defaults are the example app's shape,
``apps.services.UserDataFile``, whenever the model has those fields)::

    VOLGUARD_MISSING_FILES = {
        "services.UserDataFile": {
            "owner_field": "owner",              # --user-id filters on it; output groups by it
            "status_field": "processing_status",
            "failed_value": "failed",            # for remediation
            "log_field": "processing_log",       # for remediation
            "message": "File missing from storage. Please re-upload your file.",
            "timestamp_field": "updated_at",     # the grace period's clock
        },
    }

The grace period's clock defaults to the model's ``auto_now`` DateTimeField (else its
``auto_now_add`` one); a model without one has no grace period. Used by the engine
(`volguard.django.missing_files`) and the repair (`volguard.django.repair`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from volguard.django import queries, storage_index
from volguard.errors import AuditError

if TYPE_CHECKING:
    from django.db.models import FileField, Model, QuerySet

SETTING = "VOLGUARD_MISSING_FILES"
DEFAULT_MESSAGE = "File missing from storage. Please re-upload your file."

_CONFIG_KEYS = frozenset(
    {"owner_field", "status_field", "failed_value", "log_field", "message", "timestamp_field"}
)


@dataclass(frozen=True)
class ModelConfig:
    """How one model's rows are read and (by remediation) repaired; see the module docstring."""

    owner_field: str | None = None
    status_field: str | None = None
    failed_value: str = "failed"
    log_field: str | None = None
    message: str = DEFAULT_MESSAGE
    timestamp_field: str | None = None


@dataclass(frozen=True)
class Target:
    """One file field of one model: what an audit walks."""

    model: type[Model]
    field_name: str
    config: ModelConfig

    @property
    def label(self) -> str:
        return self.model._meta.label

    @property
    def field(self) -> FileField:
        return self.model._meta.get_field(self.field_name)  # type: ignore[return-value]

    @property
    def storage(self) -> Any:
        return storage_index.unwrap(self.field.storage)

    def rows(self) -> QuerySet:
        """Every row of the model, as stored: see `volguard.django.queries.base_rows`."""
        return queries.base_rows(self.model)

    @property
    def per_row_storage(self) -> str | None:
        """Why a row's file may live on another storage than the field's, or None.

        Django's FieldFile takes ``field.storage`` (a callable ``storage=`` is called once,
        when the model loads), so every row of a stock field is on the field's storage. An
        app that picks the storage per row does it in its own FieldFile class (its
        ``__init__`` or a ``storage`` attribute: django-filer's public/private split) or in
        the field's descriptor: for those, each row's storage is read from a model
        instance (slower, and only for such fields).
        """
        return per_row_storage(self.model, self.field)

    def __str__(self) -> str:
        return f"{self.label}.{self.field_name}"


def discover(labels: Sequence[str] = ()) -> list[Target]:
    """The file fields to audit: those of ``labels`` (``app.Model`` or ``app.Model.field``),
    or of every installed model when none is given.

    Proxy and swapped-out models are left out (their table is audited through the concrete
    model), and so are fields a model inherits from a multi-table parent (audited with the
    parent), so no row is audited twice. A model named in ``labels`` has its inherited file
    fields too: ``--model app.Child`` audits the parent's field over the child's rows.
    """
    from django.apps import apps

    if not labels:
        models = [m for m in apps.get_models() if not m._meta.proxy and not m._meta.swapped]
        return [t for m in models for t in _targets(m)]

    targets: list[Target] = []
    for label in labels:
        app_label, _, rest = label.partition(".")
        model_name, _, field_name = rest.partition(".")
        try:
            model = apps.get_model(app_label, model_name)
        except (LookupError, ValueError):
            raise AuditError(
                f"unknown model {label!r} (use app_label.ModelName, e.g. services.UserDataFile)"
            ) from None
        found = _targets(model, inherited=True)
        if field_name:
            found = [t for t in found if t.field_name == field_name]
        if not found:
            what = f"field {field_name!r}" if field_name else "FileField or ImageField"
            raise AuditError(f"{model._meta.label} has no {what} to audit")
        targets.extend(t for t in found if t not in targets)
    return targets


def model_config(model: type[Model]) -> ModelConfig:
    """The model's configuration: ``VOLGUARD_MISSING_FILES`` over the example app's defaults."""
    names = {f.name for f in model._meta.get_fields()}
    values: dict[str, Any] = {
        "owner_field": "owner" if "owner" in names else None,
        "status_field": "processing_status" if "processing_status" in names else None,
        "log_field": "processing_log" if "processing_log" in names else None,
        "timestamp_field": _timestamp_field(model),
    }
    values.update(_configured().get(model._meta.label_lower, {}))
    for key in ("owner_field", "status_field", "log_field", "timestamp_field"):
        name = values.get(key)
        if name is not None and name not in names:
            raise AuditError(
                f"{SETTING}[{model._meta.label!r}][{key!r}]: {model._meta.label} has no "
                f"field {name!r}"
            )
    return ModelConfig(**values)


def per_row_storage(model: type[Model], field: FileField) -> str | None:
    """`Target.per_row_storage` for any file field of ``model``."""
    from django.core.files.base import File
    from django.core.files.images import ImageFile
    from django.core.files.utils import FileProxyMixin
    from django.db.models.fields.files import (
        FieldFile,
        FileDescriptor,
        ImageFieldFile,
        ImageFileDescriptor,
    )
    from django.db.models.query_utils import DeferredAttribute

    stock = (FieldFile, ImageFieldFile, ImageFile, File, FileProxyMixin, object)
    for klass in field.attr_class.__mro__:
        if klass in stock:
            continue
        for name in ("__init__", "storage", "__getattr__", "__getattribute__"):
            if name in vars(klass):
                return f"{klass.__qualname__} defines {name}"
    descriptor = type(inspect.getattr_static(model, field.attname, None))
    for klass in descriptor.__mro__:
        if klass in (FileDescriptor, ImageFileDescriptor, DeferredAttribute, object):
            continue
        if "__get__" in vars(klass):
            return f"its descriptor {klass.__qualname__} defines __get__"
    return None


def _targets(model: type[Model], *, inherited: bool = False) -> list[Target]:
    from django.db.models import FileField

    own = model._meta.concrete_fields if inherited else model._meta.local_concrete_fields
    fields = [f for f in own if isinstance(f, FileField)]
    if not fields:
        return []
    config = model_config(model)
    return [Target(model, f.name, config) for f in fields]


def _configured() -> dict[str, dict[str, Any]]:
    """``VOLGUARD_MISSING_FILES``, validated, keyed by lower-case model label."""
    from django.apps import apps
    from django.conf import settings

    value = getattr(settings, SETTING, None) or {}
    if not isinstance(value, dict):
        raise AuditError(f"{SETTING} must be a dict of model label to options, not {value!r}")
    configured: dict[str, dict[str, Any]] = {}
    for label, options in value.items():
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError, TypeError):
            raise AuditError(f"{SETTING}: unknown model {label!r}") from None
        if not isinstance(options, dict) or not set(options) <= _CONFIG_KEYS:
            unknown = sorted(set(options) - _CONFIG_KEYS) if isinstance(options, dict) else []
            raise AuditError(
                f"{SETTING}[{label!r}] must be a dict with keys among "
                f"{', '.join(sorted(_CONFIG_KEYS))}" + (f" (unknown: {unknown})" if unknown else "")
            )
        configured[model._meta.label_lower] = options
    return configured


def _timestamp_field(model: type[Model]) -> str | None:
    """The field that tells a row's age: ``auto_now`` (changed) before ``auto_now_add``."""
    from django.db.models import DateTimeField

    stamps = [f for f in model._meta.concrete_fields if isinstance(f, DateTimeField)]
    for flag in ("auto_now", "auto_now_add"):
        for f in stamps:
            if getattr(f, flag, False):
                return f.name
    return None
