"""Train a domain WordPiece vocabulary on captions and save it as a HF BERT tokenizer dir."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from transformers import AutoTokenizer, BertTokenizer

from ..errors import DataError
from .text import clean_text
from .wordpiece import count_words, learn_vocab

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(captions: Iterable[str], out_dir: Path, vocab_size: int, min_frequency: int,
                    lowercase: bool, model_max_length: int, progress: bool = False) -> int:
    """Learn a vocabulary from ``captions`` (read once, as they come), save a BERT tokenizer to
    ``out_dir``; returns its size."""
    words = count_words(map(clean_text, captions), lowercase)
    if not words:
        raise DataError("tokenizer: no training captions (is the train split empty?)")
    vocab = learn_vocab(words, vocab_size, min_frequency, SPECIAL_TOKENS, progress)
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=lowercase, strip_accents=lowercase,
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
