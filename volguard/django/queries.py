"""Query helpers for large tables, shared by the audit (`volguard.django.missing_files`) and
the repair (`volguard.django.repair`): every row of a model read as stored, rows streamed a
fetched chunk at a time, values read by primary key in few queries, integer keys sent
cheaply, lists cut into chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.db.models import Model, QuerySet

#: Keys or names per ``IN (…)`` query: far below every backend's parameter limit.
IN_CHUNK = 500


def base_rows(model: type[Model], using: str | None = None) -> QuerySet:
    """Every row of ``model``, each as an instance of ``model`` itself: Django's plain
    ``QuerySet``, as its own base manager reads.

    Not ``model._default_manager`` (an app's manager may filter rows out: soft deletes,
    tenants) nor even ``model._base_manager``, which an app may replace too:
    django-polymorphic makes both downcast each row to its subclass, so a parent row would
    be read, exported and deleted as a child. ``using`` defaults to the database Django
    writes the model to.
    """
    from django.db import router
    from django.db.models import QuerySet

    return QuerySet(model=model, using=using or router.db_for_write(model))


def row_chunks(rows: QuerySet, chunk_size: int, *, own_connection: bool) -> Iterator[Sequence[Any]]:
    """``rows.iterator(chunk_size)`` (a ``values_list`` queryset) a chunk at a time.

    The chunks are the lists of tuples the database cursor fetches (a server-side cursor
    where ``iterator()`` would use one), so the caller loops over plain lists instead of
    Django's per-row generators. When a column needs a converter (a UUID primary key on
    SQLite, a field's ``from_db_value``), the rows come from ``iterator()`` itself.

    ``own_connection`` (outside any transaction): on PostgreSQL the rows are read on a
    connection of their own, in a transaction, whose server-side cursor then needs no
    ``WITH HOLD``, which would copy the whole result on the server (to a temporary file,
    for a large table) before the first row. The caller's connection stays free for its
    own queries, outside that transaction.
    """
    from django.db import connections
    from django.db.models.sql.constants import MULTI

    connection = connections[rows.db]
    chunked = not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
    reader = None
    if own_connection and chunked and connection.vendor == "postgresql":
        reader = connection = connections.create_connection(rows.db)
    try:
        if reader is not None:
            reader.set_autocommit(False)
        compiler = rows.query.get_compiler(connection=connection)
        results = compiler.execute_sql(MULTI, chunked_fetch=chunked, chunk_size=chunk_size)
        select = compiler.select or []  # not set up when the query is known to be empty
        fields = [s[0] for s in select[0 : getattr(compiler, "col_count", None) or len(select)]]
        composite = getattr(compiler, "has_composite_fields", None)  # Django 5.2+
        if compiler.get_converters(fields) or (composite is not None and composite(fields)):
            converted = compiler.results_iter(results, tuple_expected=True)
            while chunk := list(islice(converted, chunk_size)):
                yield chunk
            return
        yield from results
    finally:
        if reader is not None:
            reader.close()  # and with it the transaction, which only read


def values_by_pk(manager: Any, pks: list[Any], columns: Sequence[str]) -> dict[Any, tuple]:
    """``{pk: (values of columns)}`` for those rows of ``pks`` that exist.

    By ``IN (…)`` queries of `IN_CHUNK` keys, or, when the keys are integers lying close
    together (at least half of their range, as in a batch of a mostly missing table), by
    one range query whose other rows are dropped: far fewer parameters to send and parse.
    Other integer keys on PostgreSQL go as one array (``IN (SELECT unnest(%s))``).
    """
    from django.db import connections

    wanted = set(pks)
    found: dict[Any, tuple] = {}
    rows = manager.order_by()
    if wanted and all(type(pk) is int for pk in wanted):
        low, high = min(wanted), max(wanted)
        if high - low < 2 * len(wanted):
            for pk, *values in rows.filter(pk__gte=low, pk__lte=high).values_list("pk", *columns):
                if pk in wanted:
                    found[pk] = tuple(values)
            return found
        if connections[rows.db].vendor == "postgresql":
            for pk, *values in pk_in(rows, sorted(wanted)).values_list("pk", *columns):
                found[pk] = tuple(values)
            return found
    for chunk in chunks(list(wanted), IN_CHUNK):
        for pk, *values in rows.filter(pk__in=chunk).values_list("pk", *columns):
            found[pk] = tuple(values)
    return found


def pk_in(queryset: QuerySet, pks: Sequence[Any]) -> QuerySet:
    """``queryset.filter(pk__in=pks)``, cheaper for integer keys.

    Keys that are exactly a run of consecutive integers (a batch of a mostly missing
    table) become one range, ``pk BETWEEN low AND high``: nothing to send or look up per
    key. On PostgreSQL other integer keys go as one array: ``IN (%s, %s, …)`` with
    thousands of parameters costs more to build and for psycopg to parse than the query
    itself, ``IN (SELECT unnest(%s))`` sends one parameter, in its text form (``{1,2,3}``:
    five times cheaper for psycopg than a list of ints).
    """
    from django.db import connections
    from django.db.models.expressions import RawSQL

    keys = list(pks)
    if not keys or not all(type(pk) is int for pk in keys):
        return queryset.filter(pk__in=keys)
    low, high = min(keys), max(keys)
    if high - low + 1 == len(keys) == len(set(keys)):
        return queryset.filter(pk__gte=low, pk__lte=high)
    if connections[queryset.db].vendor == "postgresql":
        array = "{" + ",".join(map(str, keys)) + "}"
        return queryset.filter(pk__in=RawSQL("SELECT unnest(%s::bigint[])", (array,)))
    return queryset.filter(pk__in=keys)


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """``items`` cut into lists of at most ``size``, in order."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
