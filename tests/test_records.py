"""The record types: one place for a pair's fields, its table schema, its id and its shard key."""
from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from biomedclip_factory.corpus.records import (PAIR_FIELDS, PAIR_SCHEMA, DedupKey, Pair, Reject, image_path,
                                               make_pair_id)
from biomedclip_factory.errors import DataError

from .pairs import make_pair


def test_the_table_schema_is_the_pair_fields_in_order_with_their_types():
    assert PAIR_SCHEMA.names == list(PAIR_FIELDS) == [f.name for f in dataclasses.fields(Pair)]
    assert PAIR_SCHEMA.field("mentions").type == pa.list_(pa.string())
    assert PAIR_SCHEMA.field("width").type == pa.int64() and PAIR_SCHEMA.field("pmid").type == pa.string()
    # the align journal reads a pair's dedup key by these names: a renamed field would make it take every
    # journal entry for damaged and align the whole corpus again, silently
    assert set(DedupKey._fields) <= set(PAIR_FIELDS)
    pair = make_pair("PMC1.1", "F1", "A caption long enough to keep.")
    assert pair.dedup_key() == DedupKey(*(pair.row()[k] for k in DedupKey._fields))


@pytest.mark.parametrize("article, fig_id", [("PMC3532326.1", "F1"), ("PMC2924383.1", "pone.0012255.g001"),
                                             ("LOCAL7.1", "fig_a_1")])
def test_ids_are_built_and_read_back_in_one_place(article, fig_id):
    pair = make_pair(article, fig_id, "a caption")
    assert pair.pair_id == make_pair_id(article, fig_id) and pair.image == image_path(pair.pair_id)
    assert pair.fig_id == fig_id and pair.article == article and pair.dedup_key().article == article
    assert "." not in pair.shard_key and pair.shard_key.startswith(article.replace(".", "v"))
    assert Reject(article, fig_id, "duplicate_image").pair_id == pair.pair_id
    assert Reject(article, None, "xml_malformed").pair_id is None


def test_rows_round_trip_through_the_table_and_a_missing_field_is_named():
    pair = make_pair("PMC1.1", "F1", "caption", mentions=["Figure 1 shows it."], width=9)
    table = pa.Table.from_pylist([pair.row()], schema=PAIR_SCHEMA)
    assert Pair.from_row(table.to_pylist()[0]) == pair
    assert "image" not in pair.sample_meta() and set(pair.sample_meta()) == set(PAIR_FIELDS) - {"image"}
    with pytest.raises(DataError, match="PMC1.1_F1: the row lacks license_code"):
        Pair.from_row({k: v for k, v in pair.row().items() if k != "license_code"})


def test_figure_ids_with_dots_keep_their_samples_whole_in_webdataset(tmp_path):
    """WebDataset splits a member name at its first dot: a dotted figure id must not become a key
    shared by the article's figures with the rest of the id taken for the extension."""
    import io
    import tarfile

    import webdataset as wds

    ids = ["Ch1.F1", "Ch1.F2", "Ch1_F1", "F%2E1", "F1"]
    pairs = [make_pair("PMC7.2", fig_id, f"caption of {fig_id}") for fig_id in ids]
    assert len({p.shard_key for p in pairs}) == len(ids)
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for pair in pairs:
            for ext, data in (("txt", pair.caption.encode()), ("jpg", b"\xff\xd8")):
                info = tarfile.TarInfo(f"{pair.shard_key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    assert [(s["__key__"], s["txt"].decode()) for s in samples] == \
        [(p.shard_key, p.caption) for p in pairs] and all("jpg" in s for s in samples)
