"""Relevance-judged collections in the shared layout, and the shipped ones.

Layout of a collection folder::

    docs.jsonl     {"doc_id": "12", "title": "...", "text": "..."}   (title optional)
    queries.jsonl  {"query_id": "1", "text": "..."}
    qrels.tsv      qid 0 docid grade                                  (grade: integer; < 0 read as 0)
    splits.json    {"train": [qid, ...], "dev": [...], "test": [...]} (optional)

``load_collection("cranfield")`` / ``"scifact"`` / ``"nfcorpus"`` read the copies shipped in
``pile_jax/resources/collections``; any other argument is a folder path, local or a URL
(``gs://bucket/collection``, read through :mod:`pile_jax.io`).

Large collections: a folder in BEIR's or MS MARCO passage's layout (:mod:`pile_jax.data.layouts`)
is read streaming into on-disk :class:`~pile_jax.data.textstore.TextStore` s (``docs`` and
``queries`` are then stores, not dicts; ``layout`` says which); so is a pile_jax-layout folder
with ``store=True`` or a ``docs.jsonl`` over :data:`STORE_THRESHOLD_BYTES`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from typing import Mapping

from etils import epath

from pile_jax import io as pio
from pile_jax.data.errors import DataError
from pile_jax.data.layouts import _json_record
from pile_jax.data.trec import read_qrels

__all__ = ["Collection", "load_collection", "SHIPPED_COLLECTIONS", "DataError", "STORE_THRESHOLD_BYTES"]

SHIPPED_COLLECTIONS = ("cranfield", "scifact", "nfcorpus")
#: a pile_jax-layout ``docs.jsonl`` larger than this is read into a TextStore (``store=None``)
STORE_THRESHOLD_BYTES = 512 << 20


@dataclasses.dataclass
class Collection:
    """A collection.

    docs: ``{doc_id: (title + " " + text).strip()}``; queries: ``{query_id: text}`` -- dicts in
    file order, or :class:`~pile_jax.data.textstore.TextStore` s (on-disk ``Mapping[str, str]``,
    row order = file order) for the large layouts; qrels: ``{query_id: {doc_id: grade}}``;
    splits: ``{split_name: [query_id, ...]}``. All ids are strings. ``layout``: ``"pile_jax"``,
    ``"beir"`` or ``"msmarco"``.
    """

    name: str
    path: str
    docs: Mapping[str, str]
    queries: Mapping[str, str]
    qrels: dict[str, dict[str, int]]
    splits: dict[str, list[str]]
    layout: str = "pile_jax"

    def split_qids(self, split: str) -> list[str]:
        """Query ids of ``split`` (file order). ``"all"`` (unless the file defines it) = every query."""
        if split in self.splits:
            return list(self.splits[split])
        if split == "all":
            return list(self.queries)
        raise ValueError(
            f"collection {self.name!r} has no split {split!r}; splits: {sorted(self.splits)} (and 'all')"
        )

    def split_qrels(self, split: str) -> dict[str, dict[str, int]]:
        """The qrels of the queries of ``split``."""
        return {q: dict(self.qrels[q]) for q in self.split_qids(split) if q in self.qrels}

    def __repr__(self) -> str:
        n_qrels = sum(len(v) for v in self.qrels.values())
        splits = {k: len(v) for k, v in self.splits.items()}
        return (
            f"Collection(name={self.name!r}, docs={len(self.docs)}, queries={len(self.queries)}, "
            f"qrels={n_qrels}, splits={splits}, path={self.path!r})"
        )


def _read_jsonl(path: epath.Path, id_field: str, text_fields: tuple[str, ...], optional: tuple[str, ...]):
    """``{id: text}`` from a JSON-lines file; text = the text fields joined by a space, stripped."""
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    if not path.is_file():
        raise DataError(path, None, "file not found")
    with path.open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            key, text = _json_record(path, lineno, line, id_field, text_fields, optional)
            if key in first:
                raise DataError(path, lineno, f"duplicate {id_field} {key!r} (first at line {first[key]})")
            first[key] = lineno
            out[key] = text
    if not out:
        raise DataError(path, None, "no records (the file is empty)")
    if not any(out.values()):
        raise DataError(path, None, f"every {'/'.join(text_fields)} is empty ({len(out)} records): nothing to rank")
    return out


def _read_splits(path: epath.Path, queries: Mapping[str, str]) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    raw = path.read_text(encoding="utf-8")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, f"malformed JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise DataError(path, None, "expected a JSON object {split_name: [query_id, ...]}")
    def line_of(split_name, qid):
        # best effort: the first line holding '"qid"' after the split's key; None if not found
        start = raw.find(json.dumps(split_name) + ":")
        pos = raw.find(json.dumps(qid), max(start, 0))
        return None if pos < 0 else raw.count("\n", 0, pos) + 1

    splits: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for name, qids in data.items():
        if not isinstance(qids, list):
            raise DataError(path, None, f"split {name!r} must be a list of query ids")
        out = []
        for qid in qids:
            if isinstance(qid, bool) or not isinstance(qid, (str, int)):
                raise DataError(path, None, f"split {name!r}: query id {qid!r} is not a string")
            qid = str(qid)
            if qid not in queries:
                raise DataError(
                    path, line_of(name, qid), f"split {name!r} names unknown query id {qid!r}"
                )
            if qid in owner:
                raise DataError(
                    path, None, f"query id {qid!r} is in split {owner[qid]!r} and again in {name!r}"
                )
            owner[qid] = name
            out.append(qid)
        splits[name] = out
    return splits


def _resolve(name_or_path: str | os.PathLike) -> tuple[str, epath.Path]:
    text = os.fspath(name_or_path) if not isinstance(name_or_path, epath.Path) else str(name_or_path)
    if text in SHIPPED_COLLECTIONS and not os.path.isdir(text):
        folder = importlib.resources.files("pile_jax.resources") / "collections" / text
        return text, epath.Path(str(folder))
    path = pio.as_path(text)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{text!r} is neither a shipped collection {list(SHIPPED_COLLECTIONS)} nor a folder"
        )
    name = path.name if pio.is_url(text) else epath.Path(os.path.abspath(text)).name
    return name or text, path


def load_collection(name_or_path: str | os.PathLike, *, qrels_file: str = "qrels.tsv",
                    store: bool | None = None) -> Collection:
    """Load a collection: a shipped name (``"cranfield"``, ``"scifact"``, ``"nfcorpus"``) or a
    folder in one of the layouts (:func:`pile_jax.data.layouts.detect_layout`: pile_jax, BEIR,
    MS MARCO passage).

    ``qrels_file`` picks another judgments file in a pile_jax-layout folder (e.g.
    ``"qrels_graded.tsv"``). ``store``: read a pile_jax-layout folder into on-disk text stores
    (``None``: when ``docs.jsonl`` is larger than :data:`STORE_THRESHOLD_BYTES`); BEIR and MS
    MARCO folders always are (stores kept beside the data, :func:`pile_jax.data.layouts.store_root`).
    Raises :class:`DataError` (``"path:line: message"``) for malformed JSON lines, missing fields,
    duplicate ids, an empty docs/queries file or one whose texts are all empty, malformed qrels
    (column count, non-integer grade, duplicates; negative grades are read as 0),
    qrels naming unknown queries/docs, and splits naming unknown or repeated queries.
    """
    name, folder = _resolve(name_or_path)
    layout = "pile_jax" if pio.is_url(str(folder)) else _layout(folder)
    if layout != "pile_jax":
        from pile_jax.data import layouts

        load = layouts.load_msmarco if layout == "msmarco" else layouts.load_beir
        docs, queries, qrels, splits = load(str(folder), name)
        return Collection(name=name, path=str(folder), docs=docs, queries=queries, qrels=qrels, splits=splits,
                          layout=layout)
    if store or (store is None and not pio.is_url(str(folder)) and (folder / "docs.jsonl").is_file()
                 and os.path.getsize(str(folder / "docs.jsonl")) > STORE_THRESHOLD_BYTES):
        return _load_stored(name, folder, qrels_file)
    docs = _read_jsonl(folder / "docs.jsonl", "doc_id", ("title", "text"), optional=("title",))
    queries = _read_jsonl(folder / "queries.jsonl", "query_id", ("text",), optional=())
    collection = Collection(name=name, path=str(folder), docs=docs, queries=queries, qrels={}, splits={})
    collection.qrels = read_qrels(folder / qrels_file, collection=collection, on_unknown="error")
    collection.splits = _read_splits(folder / "splits.json", queries)
    return collection


def _layout(folder: epath.Path) -> str:
    from pile_jax.data.layouts import detect_layout

    try:
        return detect_layout(str(folder))
    except DataError:   # no layout's files: read as pile_jax's, whose reader names the missing file
        return "pile_jax"


def _load_stored(name: str, folder: epath.Path, qrels_file: str) -> Collection:
    """A pile_jax-layout folder with docs and queries in on-disk text stores."""
    from pile_jax.data import layouts

    root = layouts.store_root(str(folder), name)
    files = {k: str(folder / f"{k}.jsonl") for k in ("docs", "queries")}
    docs = layouts._build(os.path.join(root, "docs"), [files["docs"]],
                          lambda: layouts.read_jsonl_texts(files["docs"], "doc_id", ("title", "text"), ("title",)),
                          source=files["docs"])
    queries = layouts._build(os.path.join(root, "queries"), [files["queries"]],
                             lambda: layouts.read_jsonl_texts(files["queries"], "query_id", ("text",)),
                             source=files["queries"])
    collection = Collection(name=name, path=str(folder), docs=docs, queries=queries, qrels={}, splits={})
    collection.qrels = read_qrels(folder / qrels_file, collection=collection, on_unknown="error")
    collection.splits = _read_splits(folder / "splits.json", queries)
    return collection
