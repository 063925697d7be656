"""The reset log in the MCU's flash: one JSON file, replaced atomically.

A save writes the whole log to ``<path>.tmp`` and renames it over ``<path>``. Power lost during the
write leaves the old file whole (and a stale ``.tmp``, which the next save overwrites); the rename
itself replaces the name in one step on LittleFS, MicroPython's rp2 default. On FAT, MicroPython's
rename removes the old file and then renames; a power loss between the two leaves only the
``.tmp``, which ``load`` then reads (it holds the whole new log: it was closed before the rename).
Loading never writes. A missing, unreadable or malformed file loads as an empty log: the
supervisor keeps working, and ``load`` says what it found so the caller can count it.
"""

import json
import os

FORMAT = 1


class ResetLog:
    """Loads and saves ``{"format": 1, "boots": n, "entries": [[cause, unix, uptime_s, detail], ...]}``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.saves = 0
        self.save_errors = 0

    def load(self) -> tuple[list[list[int]], int, str]:
        """Return (entries oldest first, boots, what was found: "ok", "tmp" (only the temporary
        file, whole), "missing" or "corrupt")."""
        entries, boots, found = self._read(self.path)
        if found == "missing":
            from_tmp = self._read(self.path + ".tmp")
            if from_tmp[2] == "ok":
                return from_tmp[0], from_tmp[1], "tmp"
        return entries, boots, found

    def _read(self, path: str) -> tuple[list[list[int]], int, str]:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            return [], 0, "missing"
        try:
            data = json.loads(text)
            if data["format"] != FORMAT:
                return [], 0, "corrupt"
            boots = int(data["boots"])
            entries = []
            for entry in data["entries"]:
                if len(entry) != 4:
                    return [], boots, "corrupt"
                entries.append([int(entry[0]), int(entry[1]), int(entry[2]), int(entry[3])])
        except (ValueError, KeyError, TypeError, IndexError):
            return [], 0, "corrupt"
        return entries, boots, "ok"

    def save(self, entries: list[list[int]], boots: int) -> bool:
        """Write the log atomically. Returns False (and counts it) when the flash refuses."""
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps({"format": FORMAT, "boots": boots, "entries": entries}))
            os.rename(tmp, self.path)
        except OSError:
            self.save_errors += 1
            return False
        self.saves += 1
        return True
