"""Fault commands as text, for the hand-run emulator's stdin (and tests of the same words)."""

from __future__ import annotations

import shlex
from dataclasses import replace

from hil.modememu.emulator import REGISTRATION_NAMES, ModemEmulator
from hil.modememu.model import NetworkDelays

HELP = """\
commands (one per line):
  hang | resume                 stop answering / answer again
  garbage [TEXT]                write line noise (or TEXT) now
  split on|off                  write one byte at a time
  echo on|off                   flip command echo behind the host's back
  storm [N] [LINE]              N unsolicited lines at once (default 200 of the family's URC)
  urc LINE                      one unsolicited line
  late SECONDS                  hold back the next reply that long
  reboot [mid]                  reboot now, or instead of answering the next command
  sim remove|insert [ICCID]|swap ICCID
  reg home|roaming|denied|searching|none|<0-5>
  signal RSSI [BER] | signal lost
  dialfail [N]                  next N dials fail (default 1; -1 all; 0 none)
  drop                          end the data call from the network (PPP: NO CARRIER; ECM: its link goes)
  vanish [SECONDS]              close the port; it comes back as a new PTY after SECONDS
  sms SENDER TEXT...            the network delivers a text SMS (GSM 7-bit, or UCS-2 if needed)
  sms8 SENDER HEX               the network delivers an 8-bit data SMS (its octets in hex)
  smsfill [N]                   store N filler messages (default: until the SIM store is full)
  delays ATTACH PDP SMS         the network's attach, PDP activation and SMS delivery times (s)
  status                        path, SIM, registration, signal
  quit"""


class ControlError(Exception):
    """A fault command that cannot be understood; the message says the right form."""


def apply_command(emu: ModemEmulator, line: str) -> str:
    """Run one fault command on ``emu``; returns a one-line answer for the operator.

    Raises ControlError for an unknown or malformed command (the message gives the form).
    """
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ControlError(f"cannot split {line!r}: {exc}") from None
    if not words:
        return ""
    cmd, args = words[0].lower(), words[1:]
    try:
        return _dispatch(emu, cmd, args)
    except (IndexError, ValueError, KeyError) as exc:
        raise ControlError(f"bad arguments for {cmd!r} ({exc}); type 'help' for the forms") from None


def _on_off(args: list[str]) -> bool:
    if not args or args[0] not in ("on", "off"):
        raise ValueError("expected on or off")
    return args[0] == "on"


def _dispatch(emu: ModemEmulator, cmd: str, args: list[str]) -> str:
    if cmd == "help":
        return HELP
    if cmd == "hang":
        emu.hang(True)
        return "hung: no replies until 'resume'"
    if cmd == "resume":
        emu.hang(False)
        return "answering again"
    if cmd == "garbage":
        emu.inject_garbage(" ".join(args).encode() + b"\r\n" if args else b"\x00\xff\xfe~garbage\r\n")
        return "garbage written"
    if cmd == "split":
        emu.split_writes(_on_off(args))
        return f"split writes {args[0]}"
    if cmd == "echo":
        emu.set_echo(_on_off(args))
        return f"echo {args[0]}"
    if cmd == "storm":
        count = int(args[0]) if args else 200
        emu.urc_storm(count, " ".join(args[1:]) or None)
        return f"{count} URCs sent"
    if cmd == "urc":
        emu.send_urc(" ".join(args))
        return "URC sent"
    if cmd == "late":
        emu.late_reply(float(args[0]))
        return f"next reply held back {args[0]} s"
    if cmd == "reboot":
        emu.reboot(mid_command=bool(args) and args[0] == "mid")
        return "rebooting" + (" at the next command" if args else "")
    if cmd == "sim":
        return _sim(emu, args)
    if cmd == "reg":
        value = int(args[0]) if args[0].isdigit() else REGISTRATION_NAMES[args[0]]
        emu.set_registration(value)
        return f"registration stat {value}"
    if cmd == "signal":
        if args[0] == "lost":
            emu.lose_signal()
            return "signal lost (+CSQ: 99,99, searching)"
        emu.set_signal(int(args[0]), int(args[1]) if len(args) > 1 else 99)
        return "signal set"
    if cmd == "dialfail":
        count = int(args[0]) if args else 1
        emu.fail_dials(count)
        return f"next {count} dials fail"
    if cmd == "drop":
        emu.drop_carrier()
        return "carrier dropped"
    if cmd == "vanish":
        delay = float(args[0]) if args else None
        emu.vanish(delay)
        return "port closed" + (f"; back in {delay} s on a new path" if delay is not None else "")
    if cmd in ("sms", "sms8"):
        if len(args) < 2:
            raise ValueError(f"{cmd} needs a sender and a body")
        body: str | bytes = " ".join(args[1:]) if cmd == "sms" else bytes.fromhex("".join(args[1:]))
        emu.receive_sms(args[0], body)
        used, capacity, waiting = emu.sms_counts()
        return f"SMS from {args[0]} delivered; store {used}/{capacity}, {waiting} held at the network"
    if cmd == "delays":
        delays = NetworkDelays(float(args[0]), float(args[1]), float(args[2]))
        emu.set_network_delays(delays)
        return (
            f"attach {delays.attach_s:g} s, PDP activation {delays.pdp_activation_s:g} s, "
            f"SMS {delays.sms_delivery_s:g} s"
        )
    if cmd == "smsfill":
        stored = emu.fill_sms_store(int(args[0]) if args else None)
        used, capacity, _ = emu.sms_counts()
        return f"{stored} filler messages stored; store {used}/{capacity}"
    if cmd == "status":
        model = emu.model
        sim = model.sim
        call = "ppp" if model.data_mode else f"ecm:{model.ecm_call}" if model.ecm_call is not None else "-"
        return (
            f"path={emu.path or '-'} profile={emu.profile.name} "
            f"sim={sim.iccid if sim else 'absent'} imsi={sim.imsi if sim else '-'} "
            f"reg={model.registration_stat()} csq={model.rssi},{model.ber} cfun={model.cfun} call={call} "
            f"sms={model.sms_store.used}/{model.sms_store.capacity}+{len(model.sms_waiting)}"
        )
    raise ValueError(f"unknown command {cmd!r}")


def _sim(emu: ModemEmulator, args: list[str]) -> str:
    action = args[0]
    current = emu.model.sim
    if action == "remove":
        emu.remove_sim()
        return "SIM removed"
    if action in ("insert", "swap"):
        if action == "swap" and len(args) < 2:
            raise ValueError("swap needs the new ICCID")
        base = current or emu.model.last_sim
        sim = replace(base, iccid=args[1]) if len(args) > 1 else base
        if action == "swap":
            emu.swap_sim(sim)
        else:
            emu.insert_sim(sim)
        return f"SIM {sim.iccid} inserted"
    raise ValueError(f"unknown SIM action {action!r}")
