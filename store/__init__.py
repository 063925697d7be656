"""Files every dvrlink package may use: state files (atomic writes, the state directory lock,
setting a corrupt file aside) and how messages spell config values (``toml_text``). It imports
nothing else of dvrlink, so modem, daemon, broker and viewer can all depend on it without
depending on each other."""
