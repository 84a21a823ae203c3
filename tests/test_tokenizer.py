"""The domain WordPiece vocabulary: learnt by hand-checkable merges, and the same on every run."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from biomedclip_factory.errors import DataError
from biomedclip_factory.model.tokenizer import SPECIAL_TOKENS, train_wordpiece
from biomedclip_factory.model.wordpiece import count_words, learn_vocab

from .conftest import CAPTIONS, REPO


def test_words_are_split_and_normalised_like_bert():
    assert count_words(["Café (A)  café,", "\tα-SMA"], lowercase=True) == Counter(
        {"cafe": 2, "(": 1, "a": 1, ")": 1, ",": 1, "α": 1, "-": 1, "sma": 1})
    assert count_words(["Café"], lowercase=False) == Counter({"Café": 1})


def test_merges_follow_counts_and_break_ties_on_text():
    counts = Counter({"cd": 3, "ab": 2, "abe": 1})
    # (a,##b) and (c,##d) both occur 3 times: the tie goes to "a" < "c"; then (c,##d); then (ab,##e)
    vocab = learn_vocab(counts, 100, 1, ["[PAD]"])
    assert vocab == ["[PAD]", "##b", "##d", "##e", "a", "c", "ab", "cd", "abe"]
    assert learn_vocab(counts, 7, 1, ["[PAD]"])[-1] == "ab"  # the size bound counts the specials
    assert learn_vocab(counts, 100, 2, ["[PAD]"])[-2:] == ["ab", "cd"]  # (ab,##e) occurs once < 2


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text("xab", min_size=1, max_size=9), st.integers(1, 5), min_size=1, max_size=6),
       st.integers(1, 40))
def test_vocabulary_lists_each_piece_once_and_covers_every_word(counts, size):
    vocab = learn_vocab(Counter(counts), size, 1, ["[UNK]"])
    assert len(vocab) == len(set(vocab))
    if len(vocab) < size:  # merges ran out: every word became one piece
        assert set(counts) <= set(vocab)


def test_trained_tokenizer_encodes_its_captions_without_unknowns(tmp_path):
    size = train_wordpiece(CAPTIONS, tmp_path / "tok", 300, 1, True, 32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tok) == size <= 300 and tok.convert_ids_to_tokens(list(range(5))) == SPECIAL_TOKENS
    ids = tok(CAPTIONS, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in {i for row in ids for i in row}


def test_the_vocabulary_is_learnt_from_the_text_open_clip_tokenises(tmp_path):
    """Captions are cleaned as open_clip's HFTokenizer cleans them before the words are counted: no
    piece of the vocabulary is spent on a curly quote or an HTML entity the model never sees."""
    train_wordpiece(["\u201cfreezing\u201d of the hind limb &amp; tail"] * 3, tmp_path / "tok", 300, 1, True, 32)
    vocab = AutoTokenizer.from_pretrained(tmp_path / "tok").get_vocab()
    assert '"' in vocab and "&" in vocab and not {"\u201c", "\u201d", "amp"} & set(vocab)


def test_no_caption_with_a_word_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no training captions"):
        train_wordpiece(iter(["", "   "]), tmp_path / "tok", 300, 1, True, 32)


def test_the_train_captions_stream_across_row_groups(tmp_path):
    from biomedclip_factory.corpus.table import split_captions

    rows = pd.DataFrame({"caption": [f"caption {i}" for i in range(7)],
                         "split": ["train", "test", "train", "train", "val", "train", "test"]})
    rows.to_parquet(tmp_path / "pairs.parquet", row_group_size=2, index=False)
    assert list(split_captions(tmp_path / "pairs.parquet", "train")) == ["caption 0", "caption 2", "caption 3", "caption 5"]


@pytest.mark.slow  # runs stages or DeepSpeed in subprocesses: out of the edit-test loop
def test_same_captions_give_the_same_vocabulary_in_every_process(tmp_path):
    """``tokenizers``' trainer gave 1004-1006 tokens on the embedded default's captions across runs."""
    script = ("import sys; from pathlib import Path; from tests.conftest import CAPTIONS;"
              "from biomedclip_factory.model.tokenizer import train_wordpiece;"
              "train_wordpiece(CAPTIONS * 3, Path(sys.argv[1]), 4000, 1, True, 32)")
    vocabs = set()
    for seed in ("1", "2", "3"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, cwd=REPO, env=env)
        vocabs.add((out / "tokenizer.json").read_bytes())
    assert len(vocabs) == 1
