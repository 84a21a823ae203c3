"""Text as open_clip's ``HFTokenizer`` tokenises it, for training, evaluation, serving and the vocabulary."""
from __future__ import annotations

from typing import Any, Sequence

from open_clip.tokenizer import get_clean_fn

# open_clip's HFTokenizer cleans every text before tokenising it (ftfy, HTML entities, whitespace), the
# BiomedCLIP release included: curly quotes become straight ones, thin spaces plain ones (~6% of ROCO's
# captions change). Training, evaluation, serving and the vocabulary see the text it would see.
clean_text = get_clean_fn("whitespace")


def tokenize(tokenizer: Any, texts: Sequence[str], context_length: int) -> Any:
    """open_clip's ``HFTokenizer`` call, padded to the batch's longest instead of the context (the
    same embeddings: padding is masked): cleaned text, [CLS] … [SEP], truncated to ``context_length``."""
    return tokenizer([clean_text(t) for t in texts], padding="longest", truncation=True, max_length=context_length,
                     return_tensors="pt")
