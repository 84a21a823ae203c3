"""Train a domain WordPiece vocabulary on captions and save it as a HF BERT tokenizer dir."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import BertWordPieceTokenizer
from transformers import AutoTokenizer, BertTokenizer

from ..errors import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(captions: Iterable[str], out_dir: Path, vocab_size: int, min_frequency: int,
                    lowercase: bool, model_max_length: int) -> int:
    """Train on ``captions``, save a ``BertTokenizerFast`` to ``out_dir``; returns the vocab size."""
    texts = [c for c in captions if c.strip()]
    if not texts:
        raise DataError("tokenizer: no training captions (is the train split empty?)")
    wp = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=lowercase)
    wp.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                           special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok = BertTokenizer(vocab=wp.get_vocab(), do_lower_case=lowercase, strip_accents=lowercase,
                        model_max_length=model_max_length)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    return tok.vocab_size


def copy_tokenizer(source: Path, out_dir: Path, model_max_length: int) -> int:
    """Save the HF tokenizer in ``source`` (e.g. a pretrained BERT's) to ``out_dir``; returns its size.

    Only the tokenizer files are written, so the model dir built from it stays small.
    """
    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token_id is None:
        raise DataError(f"tokenizer: {source} has no padding token; a CLIP text tower needs one")
    tok.model_max_length = model_max_length
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    return len(tok)
