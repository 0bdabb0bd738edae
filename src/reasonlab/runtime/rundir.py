"""A run directory: the one place a run writes everything it produces.

Every run (training, evaluation, search) writes into a directory holding its resolved config
(``config.yaml``), JSONL logs (metrics, samples), JSON summaries and checkpoints. This module only
does the file handling, with the two guarantees long runs need:

- JSONL records survive a crash: each record is one line written with ``flush`` + ``fsync``, and a
  last line cut off mid-write (the process died while writing it) is skipped on reading and cleaned
  away before the next append, so a resumed run keeps appending to a well-formed file.
- JSON files are replaced atomically (write a temporary file, then ``os.replace``): a reader never
  sees half a summary.

Reusing a directory (``resume=True``) is how runs resume; when the config stored there differs from
the new one in fields that change the result, a warning lists the differences.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import yaml

from reasonlab import config as config_lib
from reasonlab.errors import DataError, UsageError

log = logging.getLogger(__name__)

#: Config fields that do not change what a run computes, so a change in them is not worth a warning
#: when a directory is reused.
HARMLESS_FIELDS = frozenset({"resume", "out", "log_every", "save_every", "keep_last", "save_final"})


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file inside ``path`` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file owner-only; results are meant to be read like any other file (umask applies).
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class RunDir:
    """The directory of one run. ``run / "name"`` is a path inside it.

    ``config`` (a config dataclass) is written resolved to ``config.yaml``. With ``resume=False`` a
    directory that already holds a run is refused rather than mixed with a new one; with
    ``resume=True`` it is reused, and differences from the stored config are logged as a warning.
    A directory holding only ``config.yaml`` is a run that failed before it wrote anything (an unknown
    model, say): it is simply reused.
    """

    def __init__(self, path: str | Path, *, config: Any = None, resume: bool = True,
                 harmless_fields: Iterable[str] = HARMLESS_FIELDS):
        self.path = Path(path)
        self._tail_checked: set[str] = set()
        cfg_path = self.path / "config.yaml"
        holds_run = cfg_path.exists() and any(p.name != cfg_path.name for p in self.path.iterdir())
        if holds_run and not resume:
            raise UsageError(f"{self.path} already holds a run; resume it, delete it, or choose another output directory")
        self.path.mkdir(parents=True, exist_ok=True)
        if config is not None:
            new = config_lib.to_dict(config)
            if holds_run:
                self._warn_config_changes(cfg_path, new, set(harmless_fields))
            atomic_write_text(cfg_path, yaml.safe_dump(new, sort_keys=False))

    def _warn_config_changes(self, cfg_path: Path, new: dict[str, Any], harmless: set[str]) -> None:
        try:
            old = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError:
            log.warning("%s: the stored config is not valid YAML; overwriting it", cfg_path)
            return
        changed = [
            f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
            for k in sorted(set(old) | set(new))
            if k not in harmless and old.get(k) != new.get(k)
        ]
        if changed:
            log.warning("reusing %s with a different config (%s); results will mix both settings",
                        self.path, "; ".join(changed))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- JSONL -------------------------------------------------------------------------------

    def _drop_partial_tail(self, path: Path) -> None:
        """Cut a last line that lacks its newline: a record the previous process died writing."""
        if not path.exists() or path.stat().st_size == 0:
            return
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            keep = data.rfind(b"\n") + 1  # 0 when the only line is the partial one
            log.warning("%s: dropping a partly written last line (%d bytes) left by a crash", path, len(data) - keep)
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        """Append one record as one line, flushed and fsynced so that a crash keeps it."""
        path = self.path / name
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        if name not in self._tail_checked:  # once per file and process: the tail can only be cut by a crash
            self._drop_partial_tail(path)
            self._tail_checked.add(name)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """All records of a JSONL file ([] if missing). A cut-off last line is skipped; a bad line
        anywhere else is corruption and raises :class:`DataError` with its line number."""
        path = self.path / name
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").split("\n")
        records: list[dict[str, Any]] = []
        problems: list[tuple[int, str]] = []
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if i == len(lines):  # no newline after it: a write the process never finished
                    log.warning("%s: skipping a partly written last line", path)
                    continue
                problems.append((i, f"invalid JSON ({e.msg})"))
        if problems:
            raise DataError(str(path), problems)
        return records

    def rewrite_jsonl(self, name: str, records: Iterable[dict[str, Any]]) -> None:
        """Replace a JSONL file atomically (e.g. to drop records a resumed run will redo)."""
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        atomic_write_text(self.path / name, text)
        self._tail_checked.add(name)

    # -- JSON --------------------------------------------------------------------------------

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as indented JSON, atomically."""
        path = self.path / name
        atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
        return path

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))
