"""The embedded server's storage engine: mongoeco's SQLite engine with two per-write costs made flat.

mongoeco 4.11 pays for two things on every write in proportion to the whole
collection, which made each trial of a 1,000-trial study cost the embedded
server 3.7 times what one of its first 100 trials did:

* an insert decodes every document of the collection to compare ``_id``s
  numerically (so that ``1`` and ``1.0`` collide).  That comparison only
  matters when the new ``_id`` holds a number; an ObjectId or a string is
  found exactly by its storage key, which the engine checks first anyway.
* every write drops the collection's cached *features* (does any document hold
  an array at ``state``?  a Decimal128 at ``tid``?  are all ``tid`` numbers?),
  and the next query re-derives each one by parsing every stored document.
  Each feature is a fact about a set of documents that a single write changes
  in a known direction: "some document has X" can only become true by a
  written document having X (and staying true after a delete or an update that
  removed X errs on the safe side: the engine then takes its general path);
  "every document's value is a number" stays so only if the written ones are
  numbers too.  So the cache is kept and updated from the written rows alone.

The written rows are judged by mongoeco's own probe for each feature, run on a
copy of just those rows under a scratch namespace inside the same write
transaction, then removed; a feature whose kind is not known here is dropped
as before.  Everything else (the wire protocol, queries, indexes, the file
format) is mongoeco's, unchanged: the same database file opens with the stock
engine.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from mongoeco.core.identity import id_contains_numeric_value
from mongoeco.engines.sqlite import SQLiteEngine

SCRATCH_DB = "\x00mongotune-feature-probe"

# feature kind (the cache key's text before the first colon) -> (probe method, how many ':'-separated args)
_EXISTS = {
    "top_level_array": ("_field_is_top_level_array_in_collection", 1),
    "traverses_array": ("_field_traverses_array_in_collection", 1),
    "traverses_dbref": ("_field_traverses_dbref_in_collection", 1),
    "tagged_type": ("_field_contains_tagged_value_type_in_collection", 2),
    "contains_real_numeric": ("_field_contains_real_numeric_in_collection", 1),
    "contains_non_ascii_text": ("_field_contains_non_ascii_text_in_collection", 1),
}
_UNIFORM = {"uniform_scalar_sort_type": ("_field_has_uniform_scalar_sort_type_in_collection", 1)}


def _feature_args(text: str, nargs: int) -> tuple[str, list[str]] | None:
    """(kind, args) of a feature key's text such as ``tagged_type:result.loss:decimal``."""
    kind, sep, rest = text.partition(":")
    if not sep:
        return None
    if nargs == 1:
        return kind, [rest]
    field, sep, last = rest.rpartition(":")
    return (kind, [field, last]) if sep else None


def combine(kind: str, cached: Any, written: Any) -> Any:
    """A feature of (the collection before the write) combined with the same feature of the written rows."""
    if kind in _EXISTS:
        return bool(cached) or bool(written)
    # uniform sort type: a type name when every document agrees, else False
    return cached if isinstance(cached, str) and written == cached else False


class FlatCostSQLiteEngine(SQLiteEngine):
    """mongoeco's SQLiteEngine whose inserts and feature cache cost the same in a 100- or 10,000-document collection."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._written_here = threading.local()

    # -------------------------------------------------------- inserts
    def _validate_document_against_unique_indexes(self, db_name, coll_name, document, *,
                                                  exclude_storage_key=None, skip_id_check=False,
                                                  scan_payload_id=False):
        if scan_payload_id and not id_contains_numeric_value(document.get("_id")):
            scan_payload_id = False  # the storage-key lookup already found any equal _id
        self._note_written(db_name, coll_name, document, exclude_storage_key)
        return super()._validate_document_against_unique_indexes(
            db_name, coll_name, document, exclude_storage_key=exclude_storage_key,
            skip_id_check=skip_id_check, scan_payload_id=scan_payload_id)

    # -------------------------------------------------------- the feature cache
    def _replace_search_entries_for_document(self, conn, db_name, coll_name, storage_key, document,
                                             search_indexes=None):
        self._pending(db_name, coll_name).add(storage_key)
        return super()._replace_search_entries_for_document(conn, db_name, coll_name, storage_key, document,
                                                            search_indexes=search_indexes)

    def _note_written(self, db_name: str, coll_name: str, document: dict, storage_key: str | None) -> None:
        if storage_key is None and "_id" in document:
            storage_key = self._storage_key(document["_id"])
        if storage_key is not None:
            self._pending(db_name, coll_name).add(storage_key)

    def _pending(self, db_name: str, coll_name: str) -> set[str]:
        table = getattr(self._written_here, "keys", None)
        if table is None:
            table = self._written_here.keys = {}
        return table.setdefault((db_name, coll_name), set())

    def _invalidate_collection_features_cache(self, db_name=None, coll_name=None):
        table = getattr(self._written_here, "keys", None) or {}
        written = table.pop((db_name, coll_name), None) if db_name is not None and coll_name is not None else None
        if not written or db_name == SCRATCH_DB:
            if db_name is None or coll_name is None:
                table.clear()
            return super()._invalidate_collection_features_cache(db_name, coll_name)
        try:
            self._update_features(db_name, coll_name, sorted(written))
        except Exception:  # any surprise: forget the features, as the stock engine would
            super()._invalidate_collection_features_cache(db_name, coll_name)

    def _update_features(self, db_name: str, coll_name: str, keys: list[str]) -> None:
        cache = self._collection_features_cache
        cached = {key: value for key, value in list(cache.items()) if key[:2] == (db_name, coll_name)}
        if not cached:
            return
        conn = self._require_connection()
        opened_here = not conn.in_transaction  # then our statements begin one: end it, leaving nothing behind
        self._copy_rows(conn, db_name, coll_name, keys)
        try:
            for key, value in cached.items():
                probe = self._probe_for(key[2])
                if probe is None:
                    cache.pop(key, None)
                    continue
                kind, method, args = probe
                cache[key] = combine(kind, value, method(SCRATCH_DB, coll_name, *args))
        finally:
            conn.execute("DELETE FROM documents WHERE db_name = ?", (SCRATCH_DB,))
            for key in [k for k in cache if k[0] == SCRATCH_DB]:
                cache.pop(key, None)
            if opened_here and conn.in_transaction:
                conn.commit()

    def _probe_for(self, text: str) -> tuple[str, Callable, list[str]] | None:
        kind = text.partition(":")[0]
        method_name, nargs = _EXISTS.get(kind) or _UNIFORM.get(kind) or (None, 0)
        parsed = _feature_args(text, nargs) if method_name else None
        if parsed is None:
            return None
        return kind, getattr(self, method_name), parsed[1]

    @staticmethod
    def _copy_rows(conn, db_name: str, coll_name: str, keys: list[str]) -> None:
        conn.execute("DELETE FROM documents WHERE db_name = ?", (SCRATCH_DB,))
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            conn.execute(f"INSERT INTO documents (db_name, coll_name, storage_key, document) "
                         f"SELECT ?, coll_name, storage_key, document FROM documents "
                         f"WHERE db_name = ? AND coll_name = ? AND storage_key IN ({marks})",
                         (SCRATCH_DB, db_name, coll_name, *chunk))
