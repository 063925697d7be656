"""State files that every dvrlink package may use: atomic writes, the state directory lock, and
setting a corrupt file aside. It imports nothing of dvrlink, so modem, daemon, broker and viewer
can all depend on it without depending on each other."""
