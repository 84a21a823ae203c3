"""The released BiomedCLIP's layout (an open_clip HF-hub snapshot) converted into this project's model dir.

The hub snapshot holds ``open_clip_config.json`` and ``open_clip_pytorch_model.bin`` and names its
text tower by hub id (``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract``), which open_clip would
download. Nothing is downloaded here: the user names a local copy of that BERT dir (``config.json``,
``vocab.txt``), whose config and tokenizer go into the converted dir beside the snapshot's weights,
as safetensors. The result loads like any model dir this project writes (``local-dir:``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from ..errors import ParamsError
from ..io import write_json_atomic
from .build import CONFIG_NAME, WEIGHTS_NAME, create_model, save_weights, text_tower_location

SNAPSHOT_WEIGHTS = "open_clip_pytorch_model.bin"


def is_snapshot(path: Path) -> bool:
    """An open_clip hub snapshot: its config and ``.bin`` weights, and no weights of ours."""
    return (path / CONFIG_NAME).is_file() and (path / SNAPSHOT_WEIGHTS).is_file() and not (path / WEIGHTS_NAME).is_file()


def convert_snapshot(snapshot: Path, text_dir: Path | None, out: Path, key: str) -> None:
    """Write ``snapshot`` (+ the local text tower dir it names) to ``out`` in the model-dir contract.

    ``key`` is the params key that names ``text_dir``, for the error when it is missing or wrong.
    """
    config = json.loads((snapshot / CONFIG_NAME).read_text())
    text_cfg = config["model_cfg"]["text_cfg"]
    hub_id = text_cfg.get("hf_model_name")
    if text_dir is None or not (text_dir / "config.json").is_file():
        raise ParamsError(f"params: '{key}': {snapshot} is a hub snapshot whose text tower is {hub_id!r}; "
                          f"name a local copy of it (a dir with config.json and vocab.txt)")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.model_max_length = text_cfg.get("context_length", tokenizer.model_max_length)
    tokenizer.save_pretrained(out)
    AutoConfig.from_pretrained(text_dir).save_pretrained(out)
    text_cfg.update(text_tower_location(out))
    write_json_atomic(out / CONFIG_NAME, config)
    state = torch.load(snapshot / SNAPSHOT_WEIGHTS, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # a buffer older BERTs saved
    model = create_model(out, load_weights=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ParamsError(f"params: '{key}': the weights in {snapshot} do not fit the text tower in {text_dir} "
                          f"with the snapshot's config: {str(exc)[:300]}") from exc
    save_weights(model, out)
