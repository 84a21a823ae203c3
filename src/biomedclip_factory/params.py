"""Read and validate one stage's section of params.yaml, so a bad key fails early and by name."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ParamsError

T = TypeVar("T")


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
    return Section(data[stage], stage)
