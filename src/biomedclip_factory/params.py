"""Read and validate one stage's section of params.yaml, so a bad key fails early and by name."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ParamsError

T = TypeVar("T")

# Every key a section may hold; a nested dict is a sub-section, None a mapping of the user's own names,
# "*" any name whose value has the keys given. A key outside this is a typo (``max_article``) that a
# default would otherwise hide: it fails by name with the closest known key.
_ZEROSHOT_SET = {"path": None, "classnames": None, "templates": None, "metric": None, "npz_split": None}
KNOWN_KEYS: dict[str, dict[str, Any]] = {
    "scrape": dict.fromkeys(("source", "layout", "inventory", "file_list", "pairs_licence", "pairs_group_by",
                             "licences", "max_articles", "since", "until", "workers", "runner", "timeout_s",
                             "retries", "rate_limit")),
    "align": {**dict.fromkeys(("max_side", "crop_side", "jpeg_quality", "min_caption_chars", "min_side", "max_aspect_ratio",
                               "near_duplicate_distance", "mentions", "workers", "runner")),
              "split": {"salt": None, "ratios": None}},
    "shard": dict.fromkeys(("shard_size", "seed")),
    "tokenizer": dict.fromkeys(("source", "vocab_size", "min_frequency", "lowercase")),
    "model": {"init_from": None, "embed_dim": None, "vision": {"timm_model_name": None},
              "text": dict.fromkeys(("init_from", "context_length", "layers", "width", "heads", "mlp_ratio"))},
    "pretrain": dict.fromkeys(("seed", "steps", "epochs", "micro_batch_size", "global_batch_size",
                               "gradient_accumulation_steps", "lr",
                               "warmup_steps", "weight_decay", "betas", "eps", "grad_clip", "precision", "zero_stage",
                               "log_every", "checkpoint_every", "num_workers", "prefetch_factor", "grad_checkpointing",
                               "text_buckets", "text_packing", "compile", "offload_optimizer", "lock_image", "lock_image_unlocked_groups", "lock_text",
                               "lock_text_unlocked_layers", "lock_text_freeze_layer_norm")),
    "evaluate": {"batch_size": None, "num_workers": None, "precision": None, "retrieval_splits": None, "models": None,
                 "zeroshot": {"*": _ZEROSHOT_SET},
                 "linear_probe": {"fractions": None, "seeds": None, "sets": {"*": dict.fromkeys(
                     ("train", "test", "train_split", "test_split", "classnames", "metric"))}},
                 "vqa": {"*": dict.fromkeys(("images", "train", "test", "answers", "epochs", "hidden", "lr", "seed"))}},
    "register": {**dict.fromkeys(("model_name", "alias", "gate_metric", "margin")),
                 "serve": dict.fromkeys(("max_rows", "max_request_bytes", "max_image_bytes", "max_image_pixels",
                                         "max_request_pixels", "batch_size", "max_text_chars"))},
}


def check_keys(data: Any, known: dict[str, Any] | None, path: str) -> None:
    """Raise on the first key of ``data`` (recursively) that ``known`` does not name."""
    if known is None or not isinstance(data, dict):
        return
    for key, value in data.items():
        if "*" in known:
            check_keys(value, known["*"], f"{path}.{key}")
        elif key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            raise ParamsError(f"params: unknown key '{path}.{key}'{hint}")
        else:
            check_keys(value, known[key], f"{path}.{key}")


class Section:
    """A params.yaml section that knows its dotted path, for error messages that name the key."""

    def __init__(self, data: dict[str, Any], path: str) -> None:
        if not isinstance(data, dict):
            raise ParamsError(f"params: '{path}' must be a mapping, got {type(data).__name__}")
        self._data = data
        self.path = path

    def get(self, key: str, kind: type[T] | tuple[type, ...], default: Any = ...) -> T:
        """Return ``key`` checked against ``kind``; missing without a default is an error."""
        where = f"{self.path}.{key}"
        if key not in self._data or self._data[key] is None and default is not ...:
            if default is ...:
                raise ParamsError(f"params: missing key '{where}'")
            return default
        value = self._data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = "/".join(k.__name__ for k in kinds)
            raise ParamsError(f"params: '{where}' must be {names}, got {value!r}")
        return value  # type: ignore[return-value]

    def positive(self, key: str, kind: type[T] = int, default: Any = ...) -> T:  # type: ignore[assignment]
        value = self.get(key, kind, default)
        if value <= 0:  # type: ignore[operator]
            raise ParamsError(f"params: '{self.path}.{key}' must be > 0, got {value!r}")
        return value

    def count(self, key: str, default: Any = ...) -> int:
        """A number of things that may be none (workers, retries): an int ≥ 0."""
        value = self.get(key, int, default)
        if value < 0:
            raise ParamsError(f"params: '{self.path}.{key}' must be >= 0, got {value!r}")
        return value

    def choice(self, key: str, options: tuple[Any, ...], default: Any = ..., kind: type = str) -> Any:
        value = self.get(key, kind, default)
        if value not in options:
            raise ParamsError(f"params: '{self.path}.{key}' must be one of {options}, got {value!r}")
        return value

    def section(self, key: str) -> "Section":
        if key not in self._data:
            raise ParamsError(f"params: missing section '{self.path}.{key}'")
        return Section(self._data[key], f"{self.path}.{key}")

    def raw(self) -> dict[str, Any]:
        return dict(self._data)


def load_section(stage: str, params_file: str | Path = "params.yaml") -> Section:
    """Load ``stage``'s section of the params file."""
    path = Path(params_file)
    if not path.exists():
        raise ParamsError(f"params: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"params: {path} is not valid YAML: {exc}") from exc
    if stage not in data:
        raise ParamsError(f"params: {path} has no section '{stage}'")
    section = Section(data[stage], stage)
    check_keys(data[stage], KNOWN_KEYS.get(stage), stage)
    return section
