"""Move a whole registry between backends: ``dvrlink-broker export FILE`` / ``import FILE``.

The file is JSON lines, so a large fleet streams through it line by line:

- first a header: ``{"format": "dvrlink-registry", "version": 1, "schema_version": 4,
  "exported_at": <Unix s>, "source": <where from>, "columns": {table: [column, ...]},
  "rows": {table: count}}``;
- then one line per row: ``{"table": "devices", "row": [value, ...]}`` in the header's column
  order; byte columns (keys, hashes, salts) are base64 strings, times are the stored floats
  (JSON keeps every bit of them);
- last ``{"end": true, "rows": <total>}``, so a file cut short is refused.

The export holds password hashes and token hashes: it is written owner-only (0600), and should
be kept like the registry itself. An import adds every row in one transaction: all or nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvrlink.broker.registry import TABLE_COLUMNS, RegistryError, RegistryStore

FORMAT = "dvrlink-registry"
FORMAT_VERSION = 1
BINARY_COLUMNS = frozenset({"public_key", "password_hash", "salt", "token_hash", "viewer_key"})


class TransferError(RegistryError):
    """An export file is malformed, cut short or from a newer broker; the message names the
    file and line, and nothing was imported."""


@dataclass(frozen=True, slots=True)
class ExportFile:
    """A parsed export: its header fields and every table's rows in ``TABLE_COLUMNS`` order."""

    schema_version: int
    exported_at: float
    source: str
    tables: dict[str, list[tuple[Any, ...]]]

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        return {table: len(rows) for table, rows in self.tables.items()}


def _encode(column: str, value: Any) -> Any:
    if column in BINARY_COLUMNS and value is not None:
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def _decode(column: str, value: Any, where: str) -> Any:
    if column in BINARY_COLUMNS and value is not None:
        if not isinstance(value, str):
            raise TransferError(f"{where}: column {column} must be a base64 string, got {value!r}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TransferError(f"{where}: column {column} is not valid base64 ({exc})") from None
    if value is not None and not isinstance(value, str | int | float):
        raise TransferError(f"{where}: column {column} holds {value!r}, not a string or number")
    return value


def export_lines(store: RegistryStore, now: float) -> Iterable[str]:
    """The export of ``store`` as lines (without newlines); read in one transaction."""
    tables = store.export_rows()
    yield json.dumps(
        {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "schema_version": store.schema_version,
            "exported_at": now,
            "source": store.location,
            "columns": {table: list(columns) for table, columns in TABLE_COLUMNS.items()},
            "rows": {table: len(rows) for table, rows in tables.items()},
        },
        sort_keys=True,
    )
    total = 0
    for table, rows in tables.items():
        columns = TABLE_COLUMNS[table]
        for row in rows:
            encoded = [_encode(c, v) for c, v in zip(columns, row, strict=True)]
            yield json.dumps({"table": table, "row": encoded}, separators=(",", ":"))
            total += 1
    yield json.dumps({"end": True, "rows": total})


def write_export(store: RegistryStore, path: Path, now: float) -> dict[str, int]:
    """Write the export of ``store`` to ``path`` (made owner-only, complete or not at all);
    returns the rows per table.

    Raises:
        OSError: ``path`` cannot be written.
        RegistryUnavailableError: the registry's server does not answer.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    counts: dict[str, int] = {}
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for number, line in enumerate(export_lines(store, now)):
                if number == 0:
                    counted = json.loads(line)["rows"]
                    counts = {table: int(counted[table]) for table in TABLE_COLUMNS}
                out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def parse_export(lines: Iterable[str], source: str, known_schema: int) -> ExportFile:
    """Parse and check an export (``source`` names it in messages).

    Raises:
        TransferError: not an export, from a newer broker, malformed, or cut short; the
            message names the line.
    """
    header: dict[str, Any] | None = None
    columns: dict[str, list[str]] = {}
    tables: dict[str, list[tuple[Any, ...]]] = {table: [] for table in TABLE_COLUMNS}
    ended = False
    total = 0
    for number, raw in enumerate(lines, start=1):
        where = f"{source}:{number}"
        if not raw.strip():
            continue
        if ended:
            raise TransferError(f"{where}: data after the end line; the file was altered or joined")
        try:
            item = json.loads(raw)
        except ValueError as exc:
            raise TransferError(f"{where}: not JSON ({exc}); was the file cut or edited?") from None
        if not isinstance(item, dict):
            raise TransferError(f"{where}: expected a JSON object")
        if header is None:
            header = _check_header(item, where, known_schema)
            columns = header["columns"]
            continue
        if item.get("end") is True:
            if item.get("rows") != total:
                raise TransferError(
                    f"{where}: the end line counts {item.get('rows')} rows, the file has {total}"
                )
            ended = True
            continue
        table, row = item.get("table"), item.get("row")
        if table not in columns or not isinstance(row, list) or len(row) != len(columns[table]):
            raise TransferError(f"{where}: expected {{'table': <a table of the header>, 'row': [values]}}")
        values = dict(zip(columns[table], row, strict=True))
        tables[table].append(
            tuple(_decode(c, values.get(c), f"{where} ({table})") for c in TABLE_COLUMNS[table])
        )
        total += 1
    if header is None:
        raise TransferError(f"{source} is empty; export a registry with `dvrlink-broker export FILE`")
    if not ended:
        raise TransferError(f"{source} is cut short (no end line after {total} rows); export it again")
    counted = {table: int(n) for table, n in header["rows"].items()}
    found = {table: len(rows) for table, rows in tables.items() if rows or table in counted}
    if {t: n for t, n in counted.items() if n} != {t: n for t, n in found.items() if n}:
        raise TransferError(f"{source}: the header counts {counted} rows, the file holds {found}")
    return ExportFile(
        int(header["schema_version"]), float(header["exported_at"]), str(header["source"]), tables
    )


def _check_header(item: dict[str, Any], where: str, known_schema: int) -> dict[str, Any]:
    if item.get("format") != FORMAT:
        raise TransferError(f'{where}: not a dvrlink registry export (no "format": "{FORMAT}" header)')
    version = item.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise TransferError(
            f"{where}: export format version {version!r}, this broker reads up to {FORMAT_VERSION}; "
            "import it with the broker version that exported it, or a newer one"
        )
    schema = item.get("schema_version")
    if not isinstance(schema, int) or schema > known_schema:
        raise TransferError(
            f"{where}: exported from schema version {schema!r}, newer than this broker knows "
            f"({known_schema}); import it with a newer dvrlink-broker"
        )
    columns = item.get("columns")
    rows = item.get("rows")
    if not isinstance(columns, dict) or not isinstance(rows, dict):
        raise TransferError(f"{where}: the header lacks its 'columns' or 'rows' table")
    for table, names in columns.items():
        known = TABLE_COLUMNS.get(table)
        if known is None or not isinstance(names, list) or not set(names) <= set(known):
            raise TransferError(
                f"{where}: table {table!r} with columns {names!r} is not part of this broker's schema"
            )
    if not isinstance(item.get("exported_at"), int | float):
        raise TransferError(f"{where}: the header lacks 'exported_at'")
    return item


def read_export(path: Path, known_schema: int) -> ExportFile:
    """Read and check the export at ``path``.

    Raises:
        OSError: the file cannot be read.
        TransferError: as :func:`parse_export`.
    """
    with path.open(encoding="utf-8") as inp:
        return parse_export(inp, str(path), known_schema)


def import_export(store: RegistryStore, export: ExportFile, *, replace: bool = False) -> None:
    """Add every row of ``export`` to ``store`` in one transaction.

    Raises:
        RegistryError: ``store`` is not empty and ``replace`` is false, or a row does not fit
            (nothing was imported).
        RegistryUnavailableError: the registry's server does not answer (nothing was imported).
    """
    tables: dict[str, Sequence[Sequence[Any]]] = dict(export.tables)
    store.import_rows(tables, replace=replace)
