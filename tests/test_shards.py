"""Shards: open_clip's layout, byte-identical reruns, an exact single evaluation pass."""
from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from biomedclip_factory.errors import DataError
from biomedclip_factory.shards.loader import (CaptionCollator, SkipCounter, eval_batches, length_buckets, shard_urls,
                                              train_batches)
from biomedclip_factory.shards.writer import write_split

from .pairs import make_pair


class _Tokenizer:
    """Whitespace tokenizer with HF's call signature: enough to check padding."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        ids = [[len(w) for w in t.split()][:max_length] for t in texts]
        width = max(len(i) for i in ids)
        return {"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])}


@pytest.fixture()
def pairs(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(7):
        buf = io.BytesIO()
        Image.new("RGB", (32, 24), (i * 30, 0, 0)).save(buf, format="JPEG")
        rows.append(make_pair(f"PMC{i}.1", "F1", "word " * (i + 1)))
        (tmp_path / rows[-1].image).write_bytes(buf.getvalue())
    return tmp_path, rows


def test_layout_sizes_and_byte_identical_rerun(pairs, tmp_path):
    root, rows = pairs
    info = write_split(rows, root, tmp_path / "a", "train", shard_size=3, seed=1)
    again = write_split(list(reversed(rows)), root, tmp_path / "b", "train", shard_size=3, seed=1)
    assert info["shards"] == 3 and info["samples"] == 7
    other = write_split(rows[:-1], root, tmp_path / "c", "train", shard_size=3, seed=1)
    assert info["sha256"] == again["sha256"] != other["sha256"]  # the split's content, as pretrain fingerprints it
    sizes = json.loads((tmp_path / "a/train/sizes.json").read_text())
    assert sizes == {"train-000000.tar": 3, "train-000001.tar": 3, "train-000002.tar": 1}
    for name in sizes:
        assert (tmp_path / "a/train" / name).read_bytes() == (tmp_path / "b/train" / name).read_bytes()
    with tarfile.open(tmp_path / "a/train/train-000000.tar") as tar:
        names = tar.getnames()
    assert all(n.rsplit(".", 1)[1] in {"jpg", "txt", "json"} for n in names) and len(names) == 9
    assert all(n.startswith("PMC") and "v1_F1." in n for n in names)  # one dot: webdataset's key split


def test_a_figure_id_of_any_length_is_written_and_read_back(pairs, tmp_path):
    """USTAR names stop at 100 bytes: one long XML id (dots escaped to 3 characters each) must not
    stop the shard stage."""
    root, rows = pairs
    long_id = "fig." * 40 + "1"
    rows = rows[:2] + [dataclasses.replace(make_pair("PMC9.1", long_id, "a long-named figure"), image=rows[0].image)]
    info = write_split(rows, root, tmp_path / "s", "train", shard_size=10, seed=0)
    assert info["samples"] == 3
    collate = CaptionCollator(_Tokenizer(), context_length=8)
    ids = _ids(eval_batches(tmp_path / "s", "train", lambda img: torch.zeros(3, 8, 8), collate, batch_size=4))
    assert sorted(ids) == sorted(r.pair_id for r in rows)


def test_eval_pass_is_exactly_once_and_pads_dynamically(pairs, tmp_path):
    root, rows = pairs
    write_split(rows, root, tmp_path, "train", shard_size=3, seed=0)
    collate = CaptionCollator(_Tokenizer(), context_length=5)
    preprocess = lambda img: torch.zeros(3, 8, 8)  # noqa: E731
    seen, widths = [], []
    for images, tokens, meta in eval_batches(tmp_path, "train", preprocess, collate, batch_size=2):
        seen += [m["pair_id"] for m in meta]
        widths.append(tokens.shape[1])
        assert images.shape[0] == tokens.shape[0] == len(meta)
        assert all(set(m) == {"pair_id", "caption"} for m in meta)  # not ~2 kB of mentions and hashes per sample
    assert sorted(seen) == sorted(r.pair_id for r in rows)
    assert max(widths) == 5 and min(widths) < 5  # capped at the context, shorter when captions are


def test_training_stream_is_endless_and_seeded(pairs, tmp_path):
    root, rows = pairs
    write_split(rows, root, tmp_path, "train", shard_size=3, seed=0)
    collate = CaptionCollator(_Tokenizer(), context_length=8)
    ident = lambda img: torch.zeros(3, 8, 8)  # noqa: E731

    def first_ids(seed):
        stream = train_batches(tmp_path, ident, collate, batch_size=4, seed=seed, rank=0)
        return [[m["pair_id"] for m in next(stream)[2]] for _ in range(5)]

    assert first_ids(3) == first_ids(3)
    assert set(next(train_batches(tmp_path, ident, collate, batch_size=4, seed=0, rank=0))[2][0]) == {"pair_id"}
    assert len(shard_urls(tmp_path, "train")) == 3


def _shard_ids(tar: Path) -> list[str]:
    with tarfile.open(tar) as t:
        return [json.loads(t.extractfile(m).read())["pair_id"] for m in t.getmembers() if m.name.endswith(".json")]


def _ids(batches) -> list[str]:
    return [m["pair_id"] for _, _, meta in batches for m in meta]


def test_eval_split_across_two_ranks_is_exact_and_disjoint(pairs, tmp_path):
    root, rows = pairs
    write_split(rows, root, tmp_path, "train", shard_size=2, seed=0)
    collate = CaptionCollator(_Tokenizer(), context_length=8)
    ident = lambda img: torch.zeros(3, 8, 8)  # noqa: E731
    per_rank = [_ids(eval_batches(tmp_path, "train", ident, collate, 3, rank=r, world_size=2)) for r in (0, 1)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(r.pair_id for r in rows)


def test_corrupted_image_is_skipped_counted_and_named(pairs, tmp_path, caplog):
    root, rows = pairs
    (root / rows[2].image).write_bytes(b"\xff\xd8 this is not a jpeg")
    write_split(rows, root, tmp_path, "train", shard_size=10, seed=0)
    skips = SkipCounter()
    collate = CaptionCollator(_Tokenizer(), context_length=8)
    seen = _ids(eval_batches(tmp_path, "train", lambda img: torch.zeros(3, 8, 8), collate, 4, skips=skips))
    assert skips.skipped == 1
    assert sorted(seen) == sorted(r.pair_id for r in rows if r is not rows[2])
    said = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(said) == 1 and "train-000000.tar: sample " + rows[2].shard_key + ": cannot decode" in said[0], said


def test_truncated_shard_loses_only_its_tail(pairs, tmp_path):
    root, rows = pairs
    write_split(rows, root, tmp_path, "train", shard_size=4, seed=0)
    shard = tmp_path / "train" / "train-000000.tar"
    intact = _shard_ids(tmp_path / "train" / "train-000001.tar")
    shard.write_bytes(shard.read_bytes()[:2000])
    skips = SkipCounter()
    collate = CaptionCollator(_Tokenizer(), context_length=8)
    seen = _ids(eval_batches(tmp_path, "train", lambda img: torch.zeros(3, 8, 8), collate, 4, skips=skips))
    assert skips.skipped >= 1 and len(intact) == len(rows) - 4
    assert set(intact) <= set(seen) and len(seen) < len(rows)  # the intact shard in full; the cut one's tail lost


def test_two_workers_still_read_each_sample_once(pairs, tmp_path):
    root, rows = pairs
    write_split(rows, root, tmp_path, "train", shard_size=2, seed=0)
    collate = CaptionCollator(_Tokenizer(), context_length=8)
    seen = _ids(eval_batches(tmp_path, "train", _zeros, collate, 2, num_workers=2))
    assert sorted(seen) == sorted(r.pair_id for r in rows)


def test_training_shuffles_samples_as_open_clip_trainer_does(tmp_path):
    """open_clip_train's sample buffer (data.py's _SAMPLE_SHUFFLE_SIZE and _INITIAL, the paper's run): 5,000
    samples, the first batch once 1,000 are in, so it already mixes ~20 shards of 50, not the first two."""
    from biomedclip_factory.shards.loader import SAMPLE_SHUFFLE_INITIAL, SAMPLE_SHUFFLE_SIZE

    assert (SAMPLE_SHUFFLE_SIZE, SAMPLE_SHUFFLE_INITIAL) == (5000, 1000)
    (tmp_path / "images").mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    rows = [make_pair(f"PMC{i}.1", "F1", "a caption") for i in range(1200)]
    for row in rows:
        (tmp_path / row.image).write_bytes(buf.getvalue())
    write_split(rows, tmp_path, tmp_path / "shards", "train", shard_size=50, seed=0)
    shard_of = {pair: tar.name for tar in (tmp_path / "shards" / "train").glob("*.tar") for pair in _shard_ids(tar)}
    collate = CaptionCollator(_Tokenizer(), context_length=8)
    first = next(train_batches(tmp_path / "shards", _zeros, collate, batch_size=32, seed=0, rank=0))[2]
    assert len({shard_of[m["pair_id"]] for m in first}) >= 8


def test_training_workers_shuffle_apart_and_the_same_on_a_rerun(pairs, tmp_path):
    """One shard, so both workers read the same samples in the same order: only their own shuffle draws
    tell their batches apart (a buffer RNG made before the workers fork reaches each as the same copy)."""
    root, rows = pairs
    write_split(rows, root, tmp_path, "train", shard_size=len(rows), seed=0)
    collate = CaptionCollator(_Tokenizer(), context_length=8)

    def first_batches() -> list[list[str]]:  # WebLoader takes batches from the workers in turn: 0, 1, 0, 1
        stream = train_batches(tmp_path, _zeros, collate, batch_size=len(rows), seed=0, rank=0, num_workers=2,
                               shuffle_buffer=len(rows))
        return [[m["pair_id"] for m in next(stream)[2]] for _ in range(4)]

    batches = first_batches()
    assert set(batches[0]) | set(batches[1]) <= {r.pair_id for r in rows}
    assert batches[0] != batches[1] and batches[0] != batches[2]
    assert first_batches() == batches


@pytest.mark.timeout(120)  # it used to spin forever
@pytest.mark.parametrize("workers", [0, 2])
def test_training_gives_up_when_no_shard_can_be_read(pairs, tmp_path, workers):
    """Resampling retries a failed shard forever: with every shard garbage it would hold the GPUs, yielding
    nothing; it must fail, saying so. A shard sizes.json lists but the disk lacks (a partial `dvc pull`)
    fails at once: training on the rest would be silent."""
    root, rows = pairs
    write_split(rows, root, tmp_path, "train", shard_size=3, seed=0)
    collate = CaptionCollator(_Tokenizer(), context_length=8)
    shards = sorted((tmp_path / "train").glob("*.tar"))
    for shard in shards:
        shard.write_bytes(b"\0garbage" * 100)
    with pytest.raises(DataError, match=f"training read nothing from its {len(shards)} shards"):
        next(train_batches(tmp_path, _zeros, collate, batch_size=2, seed=0, rank=0, num_workers=workers))
    shards[1].unlink()
    with pytest.raises(DataError, match=f"1 of the {len(shards)} train shards that sizes.json lists are missing, "
                                        f"e.g. .*{shards[1].name}"):
        train_batches(tmp_path, _zeros, collate, batch_size=2, seed=0, rank=0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 1])
def test_shards_of_another_layout_stop_the_read_saying_so(pairs, tmp_path, workers):
    """Every sample lacking a field the readers keep (shards an older shard stage wrote, or a rename): skipping
    them one by one would evaluate a gallery of 0 and train on nothing; the read stops at the first."""
    from biomedclip_factory.corpus.records import PAIR_FIELDS
    from biomedclip_factory.shards.layout import ShardLayoutError
    from biomedclip_factory.shards.loader import EVAL_META, TRAIN_META

    assert set(TRAIN_META) | set(EVAL_META) <= set(PAIR_FIELDS)
    root, rows = pairs
    write_split(rows, root, tmp_path, "train", shard_size=10, seed=0)
    shard = tmp_path / "train" / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            if member.name.endswith(".json"):
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "pair_id"}).encode()
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    collate = CaptionCollator(_Tokenizer(), context_length=8)
    with pytest.raises(ShardLayoutError, match="lacks pair_id: the shards were written by another version"):
        next(train_batches(tmp_path, _zeros, collate, batch_size=2, seed=0, rank=0, num_workers=workers))
    with pytest.raises(ShardLayoutError, match="lacks pair_id"):
        list(eval_batches(tmp_path, "train", _zeros, collate, 4, num_workers=workers))


def test_ranks_draw_different_training_streams(pairs, tmp_path):
    root, rows = pairs
    write_split(rows, root, tmp_path, "train", shard_size=2, seed=0)
    collate = CaptionCollator(_Tokenizer(), context_length=8)
    streams = [train_batches(tmp_path, _zeros, collate, batch_size=4, seed=0, rank=r) for r in (0, 1)]
    draws = [[m["pair_id"] for _ in range(6) for m in next(s)[2]] for s in streams]
    assert draws[0] != draws[1]


def _zeros(img):
    return torch.zeros(3, 8, 8)


def test_shards_stream_over_http(pairs, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    root, rows = pairs
    write_split(rows, root, tmp_path / "www", "train", shard_size=3, seed=0)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        collate = CaptionCollator(_Tokenizer(), context_length=8)
        assert shard_urls(base, "train")[0] == f"{base}/train/train-000000.tar"
        seen = _ids(eval_batches(base, "train", _zeros, collate, 4))
    finally:
        server.shutdown()
    assert sorted(seen) == sorted(r.pair_id for r in rows)


def test_stage_reads_the_table_memory_mapped_and_writes_the_same_shards(pairs, tmp_path):
    """PMC-15M's table must not be loaded into memory: the stage maps it and takes each shard's rows."""
    import gc

    import pyarrow as pa
    import pyarrow.parquet as pq

    from biomedclip_factory.corpus.records import PAIR_SCHEMA
    from biomedclip_factory.corpus.table import memory_mapped

    root, rows = pairs
    rows = [dataclasses.replace(r, caption=r.caption * 20_000, split=("train", "test")[i % 2]) for i, r in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist([r.row() for r in rows], schema=PAIR_SCHEMA), tmp_path / "pairs.parquet",
                   row_group_size=2)
    before = pa.total_allocated_bytes()
    table = memory_mapped(tmp_path / "pairs.parquet", tmp_path / "pairs.arrow")
    gc.collect()  # what copying it row group by row group allocated is garbage by now
    assert table.num_rows == 7 and table.nbytes > 500_000
    assert pa.total_allocated_bytes() - before < table.nbytes / 10  # its buffers are the mapped file
    for split in ("train", "test"):
        mapped = write_split(table, root, tmp_path / "mapped", split, shard_size=2, seed=3)
        listed = write_split(rows, root, tmp_path / "listed", split, shard_size=2, seed=3)
        assert mapped == listed and mapped["samples"] == (4 if split == "train" else 3)


def test_sorted_batches_keep_each_image_with_its_caption_and_cut_into_length_buckets():
    samples = [(torch.full((1, 2, 2), float(n)), "w " * n, {"words": n}) for n in (5, 1, 7, 3, 2, 6)]
    images, tokens, meta = CaptionCollator(_Tokenizer(), context_length=8, sort_by_length=True)(samples)
    assert [m["words"] for m in meta] == [1, 2, 3, 5, 6, 7]
    assert images[:, 0, 0, 0].tolist() == [1, 2, 3, 5, 6, 7] and (tokens != 0).sum(1).tolist() == [1, 2, 3, 5, 6, 7]
    groups = length_buckets(tokens, 0, 3, multiple=2)
    assert [tuple(g.shape) for g in groups] == [(2, 2), (1, 4), (3, 7)]  # least padding; widths rounded up, never past the batch
    assert torch.equal(torch.cat([torch.nn.functional.pad(g, (0, 7 - g.shape[1])) for g in groups]), tokens)



def test_length_bucket_cuts_leave_the_least_padding_of_any_cuts():
    """Against a plain dynamic programme over every row: the same least cost, at any batch and bucket count."""
    from biomedclip_factory.shards.loader import bucket_cuts

    def least_cost(widths: list[int], buckets: int) -> int:
        n, inf = len(widths), float("inf")
        best = [0] + [inf] * n
        for _ in range(buckets):
            best = [min(best[i] + (j - i) * max(widths[i:j], default=0) for i in range(j + 1)) for j in range(n + 1)]
        return best[n]

    rng = torch.Generator().manual_seed(0)
    for rows, buckets in ((1, 3), (7, 1), (40, 2), (90, 4), (150, 8)):
        lengths = torch.randint(1, 60, (rows,), generator=rng).sort().values
        tokens = (torch.arange(64)[None, :] < lengths[:, None]).long()
        cuts = bucket_cuts(tokens, 0, buckets, multiple=8)
        widths = [min(64, -(-int(n) // 8) * 8) for n in lengths]
        assert [c[0] for c in cuts][0] == 0 and cuts[-1][1] == rows and len(cuts) <= buckets
        assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))  # contiguous, every row once
        assert sum((stop - start) * width for start, stop, width in cuts) == least_cost(widths, buckets)


def test_the_training_transform_is_open_clips_with_uint8_out_and_normalisation_on_the_device():
    """The paper's augmentation (open_clip's RandomResizedCrop 0.9-1.0, bicubic, OpenAI mean/std): the same
    crops for the same RNG, pixels within ±1 level (torch's bicubic kernel for Pillow's), the float
    conversion moved to the device."""
    import open_clip

    from biomedclip_factory.shards.transform import CROP_RATIO, CROP_SCALE, to_model_input, train_image_transform

    assert (CROP_SCALE, CROP_RATIO) == ((0.9, 1.0), (3 / 4, 4 / 3))  # open_clip 2.23's defaults, the paper's run
    image = Image.effect_mandelbrot((300, 220), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    reference = open_clip.image_transform(160, is_train=True, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD, aug_cfg={"scale": (0.9, 1.0)})
    ours = train_image_transform(160)
    for seed in range(3):
        torch.manual_seed(seed)
        expected = reference(image)
        torch.manual_seed(seed)
        pixels = ours(image)
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 160, 160)
        ours_input = to_model_input(pixels[None])[0]
        torch.testing.assert_close(ours_input, expected, atol=1.01 / 255 / min(open_clip.OPENAI_DATASET_STD), rtol=0)
        assert (ours_input - expected).abs().mean() < 0.01


def test_draft_decoding_shrinks_only_what_a_crop_at_the_input_size_does_not_need():
    from biomedclip_factory.shards.transform import draft_jpeg_decoder

    def jpeg(size: tuple[int, int]) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", size, (90, 40, 200)).save(buf, format="JPEG")
        return buf.getvalue()

    decode = draft_jpeg_decoder(224)
    assert decode("x.jpg", jpeg((1024, 1024))).size == (256, 256)  # 1/4 still covers a 0.9-area crop at 224
    assert decode("x.jpg", jpeg((512, 300))).size == (512, 300)  # halving would upscale the crop: full size
    assert decode("x.txt", b"caption") is None
