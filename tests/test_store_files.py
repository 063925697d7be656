"""dvrlink.store.files: setting a corrupt state file aside so its owner starts clean."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from dvrlink.store.files import CorruptFileSetAside, atomic_write, move_corrupt_aside

LOG = logging.getLogger("dvrlink.test.owner")


def test_a_corrupt_file_is_renamed_and_the_log_names_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ladder.json"
    path.write_bytes(b"{not json")
    with caplog.at_level(logging.ERROR, logger=LOG.name):
        result = move_corrupt_aside(
            path,
            "Expecting property name",
            what="recovery ladder state",
            instead="starting at the bottom",
            log=LOG,
        )
    aside = tmp_path / "ladder.json.corrupt"
    assert result == CorruptFileSetAside(path, aside, "Expecting property name")
    assert not path.exists(), "the file's own name must be free for a fresh file"
    kept = aside.read_bytes()
    assert kept == b"{not json", f"the old content must be kept as it was, saw {kept!r}"
    (record,) = [r for r in caplog.records if r.name == LOG.name]
    assert record.levelno == logging.ERROR, f"logged at {record.levelname}"
    message = record.getMessage()
    wanted = (
        "recovery ladder state",
        str(path),
        "Expecting property name",
        str(aside),
        "starting at the bottom",
    )
    for part in wanted:
        assert part in message, f"{part!r} missing from the log line {message!r}"


def test_an_older_corrupt_copy_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "apn.json"
    (tmp_path / "apn.json.corrupt").write_bytes(b"old")
    path.write_bytes(b"new")
    result = move_corrupt_aside(path, "bad", what="APN memory", instead="starting empty", log=LOG)
    assert result.aside is not None and result.aside.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apn.json.corrupt"]


def test_a_rename_that_fails_leaves_the_file_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(b"\x00")
    blocker = tmp_path / "data.json.corrupt"
    blocker.mkdir()  # a directory that is not empty: the rename onto it fails, also for root
    (blocker / "keep").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        result = move_corrupt_aside(
            path,
            "bad version",
            what="data accounting file",
            instead="counting from zero",
            log=LOG,
            level=logging.WARNING,
        )
    assert result == CorruptFileSetAside(path, None, "bad version")
    assert path.read_bytes() == b"\x00", "a file that could not be moved must stay untouched"
    (record,) = [r for r in caplog.records if r.name == LOG.name]
    assert record.levelno == logging.WARNING, f"logged at {record.levelname}"
    message = record.getMessage()
    for part in ("cannot be moved aside", str(blocker), "counting from zero"):
        assert part in message, f"{part!r} missing from the log line {message!r}"
    # The owner's next save replaces the corrupt file.
    atomic_write(path, b"{}")
    assert path.read_bytes() == b"{}"


ROOT = Path(__file__).resolve().parent.parent


def _dvrlink_imports(folder: str) -> dict[str, set[str]]:
    """The dvrlink modules each file of ``folder`` imports (absolute imports, also inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[f"{folder}/{path.name}"] = {n for n in names if n.startswith("dvrlink.")}
    return found


def test_store_imports_nothing_of_dvrlink() -> None:
    imports = _dvrlink_imports("store")
    assert "store/files.py" in imports, f"no store/files.py under {ROOT}"
    wrong = {path: names for path, names in imports.items() if names}
    assert not wrong, f"store must sit below every package, but imports: {wrong}"


def test_modem_imports_no_program_package() -> None:
    programs = ("dvrlink.daemon", "dvrlink.broker", "dvrlink.viewer")
    imports = _dvrlink_imports("modem")
    assert "modem/manager.py" in imports, f"no modem/manager.py under {ROOT}"
    wrong = {p: sorted(n for n in names if n.startswith(programs)) for p, names in imports.items()}
    wrong = {p: names for p, names in wrong.items() if names}
    assert not wrong, f"modem imports the programs that use it (a package cycle): {wrong}"
