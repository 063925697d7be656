"""dvrlinkd: the device daemon (wiring, config, cloud link, pairing, status, systemd notify)."""
