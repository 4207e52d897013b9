"""A quick check of a local training text file before `datasets` reads it, so bad data fails in one clear line.

`datasets` reports an empty, binary or malformed JSON Lines file with logged tracebacks and errors that do not name
the line; this check names the file, the problem, the line and the fix instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from peft_shine.errors import DataError


def check_text_data_file(path: str | Path) -> None:
    """Raise `ValueError` unless ``path`` is non-empty UTF-8 text and, for ``.jsonl``, one JSON object per line
    (``.json``: one JSON document). Reads the file once, line by line."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; pass a file with one training text per record.")
    suffix, records = path.suffix.lower(), 0
    try:
        with open(path, encoding="utf-8", errors="strict") as handle:
            if suffix == ".json":
                json.load(handle)
                return
            for number, line in enumerate(handle, start=1):
                if "\x00" in line:
                    raise DataError(f"{path} line {number} holds NUL bytes: it is a binary file, not text.")
                if suffix == ".jsonl" and line.strip():
                    if not isinstance(json.loads(line), dict):
                        raise DataError(f"{path} line {number} is not a JSON object; expected one "
                                        f'{{"text": ...}} record per line.')
                    records += 1
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); is it a binary file?") \
            from None
    except json.JSONDecodeError as error:
        where = f"line {records + 1 if suffix == '.jsonl' else error.lineno}"
        raise DataError(f"{path} {where} is not valid JSON ({error.msg}); expected one "
                        f'{{"text": ...}} record per line.') from None
    if suffix == ".jsonl" and records == 0:
        raise DataError(f"{path} holds no records; expected one {{\"text\": ...}} JSON object per line.")
