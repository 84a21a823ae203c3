"""Records the params keys each stage reads through ``Section``, library code included.

tests/conftest.py puts this dir first on the path of the built project's ``dvc repro`` with
``PARAMS_TRACE_DIR`` set: Python imports it into every process there, and each stage process writes
the keys it read to ``<stage>.<pid>.json`` as it exits, for tests/test_dvc_deps.py to hold against
dvc.yaml. A stage's own top-level section read whole is what it logs to MLflow, not a dependency.
"""
import atexit
import json
import os
import sys
from pathlib import Path


def _trace(out: Path) -> None:
    from biomedclip_factory import params

    read: set[str] = set()
    get, raw = params.Section.get, params.Section.raw

    def traced_get(self, key, *args, **kwargs):
        read.add(f"{self.path}.{key}")
        return get(self, key, *args, **kwargs)

    def traced_raw(self):
        if "." in self.path:
            read.add(self.path)
        return raw(self)

    def dump() -> None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name.startswith("stages.") and read:
            (out / f"{spec.name.split('.')[1]}.{os.getpid()}.json").write_text(json.dumps(sorted(read)))

    params.Section.get, params.Section.raw = traced_get, traced_raw
    atexit.register(dump)


if os.environ.get("PARAMS_TRACE_DIR"):
    _trace(Path(os.environ["PARAMS_TRACE_DIR"]))
