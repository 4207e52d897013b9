"""The append-only JSONL log of per-example results that lets an interrupted evaluation resume.

Each answered batch is appended as complete lines in one ``write``, then flushed and ``fsync``-ed, so a crash
leaves at most one partial line at the end. Opening the log drops such a partial (or otherwise unreadable) line
by rewriting the file atomically from its valid lines before anything new is appended.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from peft_shine.evaluation.conditions import TaskKey
from peft_shine.storage.io_utils import atomic_write_text


logger = logging.getLogger(__name__)

Row = dict[str, Any]


def row_key(row: Row) -> TaskKey:
    """The task key of a stored row (see `conditions.Task.key`)."""
    return row["condition"], row["id"], row["context_sha256"], row["adapter_context_sha256"]


def _parse(line: str) -> Row | None:
    try:
        row = json.loads(line)
        row_key(row)
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    return row if isinstance(row, dict) else None


class PredictionLog:
    """Rows already recorded in ``path`` (the last one wins per key) and safe appends of new ones."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[TaskKey, Row] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        lines = [line for line in text.split("\n") if line.strip()]
        rows = [_parse(line) for line in lines]
        valid = [row for row in rows if row is not None]
        for row in valid:
            self.rows[row_key(row)] = row
        if len(valid) != len(lines) or (text and not text.endswith("\n")):
            logger.warning("%s: dropping %d unreadable line(s) (an interrupted write)", self.path,
                           len(lines) - len(valid))
            atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in valid))

    def keys(self) -> set[TaskKey]:
        """The keys of every recorded row."""
        return set(self.rows)

    def append(self, rows: Iterable[Row]) -> None:
        """Append rows durably (one write, flush, fsync) and record them."""
        rows = list(rows)
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(row) + "\n" for row in rows))
            handle.flush()
            os.fsync(handle.fileno())
        for row in rows:
            self.rows[row_key(row)] = row
