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

And one read: a find whose whole filter is one top-level field equal to a value
(or ``$in`` a list), with no sort, skip or limit, such as a pool's
``{"state": 0}``, parses every stored document in mongoeco 4.11, which uses
its index on the field only for a ``find_one``.  When the field has a
single-field index and no document holds an array there, this engine reads
the matching documents through that index, as mongoeco's own ``find_one``
path does, without the limit.

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
from mongoeco.core.projections import apply_projection
from mongoeco.core.query_plan import EqualsCondition, InCondition
from mongoeco.engines.sqlite import SQLiteEngine

SCRATCH_DB = "\x00mongotune-feature-probe"
# below this many documents a collection's facts are dropped at a write, as the stock engine does: re-deriving them
# is cheap there, and the cache then holds only the facts of large collections (a server of many small databases,
# such as the tests', would otherwise keep every fact it ever learnt, and each write scans them all)
SMALL_COLLECTION = 500

# feature kind (the cache key's text before the first colon) -> (probe method, how many ':'-separated args)
_EXISTS = {
    "top_level_array": ("_field_is_top_level_array_in_collection", 1),
    "traverses_array": ("_field_traverses_array_in_collection", 1),
    "traverses_dbref": ("_field_traverses_dbref_in_collection", 1),
    "tagged_type": ("_field_contains_tagged_value_type_in_collection", 2),
    "contains_real_numeric": ("_field_contains_real_numeric_in_collection", 1),
    "contains_non_ascii_text": ("_field_contains_non_ascii_text_in_collection", 1),
    "comparison_mismatch": ("_field_has_comparison_type_mismatch_in_collection", 2),
    "scalar_or_array_comparison_mismatch": ("_field_has_scalar_or_array_element_type_mismatch_in_collection", 2),
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

    def _documents_in(self, db_name: str, coll_name: str) -> int:
        row = self._require_connection().execute(
            "SELECT COUNT(*) FROM documents WHERE db_name = ? AND coll_name = ?", (db_name, coll_name)).fetchone()
        return int(row[0]) if row else 0

    def _update_features(self, db_name: str, coll_name: str, keys: list[str]) -> None:
        cache = self._collection_features_cache
        cached = {key: value for key, value in list(cache.items()) if key[:2] == (db_name, coll_name)}
        if not cached:
            return  # nothing learnt yet: no count, no copy
        if self._documents_in(db_name, coll_name) < SMALL_COLLECTION:
            super()._invalidate_collection_features_cache(db_name, coll_name)
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

    # -------------------------------------------------------- reads by an index
    def _open_scan_documents_sync(self, reader):
        docs = self._indexed_equality_read(reader)
        return iter(docs) if docs is not None else super()._open_scan_documents_sync(reader)

    def _indexed_equality_read(self, reader) -> list[dict] | None:
        """The documents of ``{field: value}`` / ``{field: {"$in": [...]}}`` through the field's index, or None
        when the read has another shape (then mongoeco's own plan answers it)."""
        sem, db_name, coll_name = reader.semantics, reader.db_name, reader.coll_name
        plan = sem.query_plan
        if not isinstance(plan, (EqualsCondition, InCondition)) or "." in plan.field or plan.field == "_id":
            return None
        if (sem.text_query is not None or sem.sort or sem.skip or sem.limit or sem.collation is not None
                or sem.hint is not None or self._is_profile_namespace(coll_name)):
            return None
        values = (plan.value,) if isinstance(plan, EqualsCondition) else tuple(plan.values)
        if not values or not all(type(v) in (str, int, float, bool) for v in values):
            return None  # null, documents, arrays: mongoeco's plan
        index = next((ix for ix in self._load_indexes(db_name, coll_name) if ix["fields"] == [plan.field]
                      and self._supports_scalar_index(ix) and ix.get("scalar_physical_name")), None)
        if index is None or self._field_is_top_level_array_in_collection(db_name, coll_name, plan.field):
            return None
        conn = self._require_connection()
        collection_id = self._lookup_collection_id(conn, db_name, coll_name)
        if collection_id is None:
            return None
        try:
            signatures = [sig for v in values for sig in self._multikey_signatures_for_query_value(
                v, null_matches_undefined=plan.null_matches_undefined)]
        except NotImplementedError:
            return None
        where = " OR ".join("(type_score = ? AND element_key = ?)" for _ in signatures)
        params = [db_name, coll_name, collection_id, index["name"]]
        for element_type, element_key in signatures:
            params += [self._multikey_type_score(element_type), element_key]
        rows = conn.execute(
            "SELECT storage_key, document FROM documents WHERE db_name = ? AND coll_name = ? AND storage_key IN "
            f"(SELECT storage_key FROM scalar_index_entries "
            f"INDEXED BY {self._quote_identifier(str(index['scalar_physical_name']))} "
            f"WHERE collection_id = ? AND index_name = ? AND ({where}))", tuple(params)).fetchall()
        return [apply_projection(self._deserialize_document(doc), sem.projection, selector_filter=sem.filter_spec,
                                 dialect=sem.dialect) for _, doc in rows]
