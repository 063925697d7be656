"""The emulated modem: SIM, network and AT interpreter, independent of the PTY.

:class:`ModemModel` takes bytes with :meth:`ModemModel.feed` and answers through two callables it
is given: ``write(bytes)`` and ``schedule(delay_s, fn)``. The PTY runner in ``emulator.py``
supplies both and calls everything under one lock.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dvrlink.protocol.sms import Alphabet, MessageStatus, PduError, Submit, decode_pdu
from hil.modememu.profiles import EmuProfile
from hil.modememu.sms import TEXT_STATUS_NAMES, IncomingSms, SmsStore, cmt_lines, pdu_lines, text_lines

Write = Callable[[bytes], None]
Schedule = Callable[[float, Callable[[], None]], None]

CME_TEXT = {
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    16: "incorrect password",
    30: "no network service",
    100: "unknown",
    533: "missing or unknown APN",
}
NUMERIC_FINAL = {"OK": "0", "CONNECT": "1", "NO CARRIER": "3", "ERROR": "4"}

STAT_NOT_REGISTERED = 0
STAT_HOME = 1
STAT_SEARCHING = 2
STAT_DENIED = 3
STAT_ROAMING = 5

EF_AD = 28589
EF_ICCID = 12258
ROAMING_PLMN = "00101"
ROAMING_OPERATOR = "Emulated Roaming"


@dataclass(frozen=True, slots=True)
class SimCard:
    """A SIM as the emulator holds it."""

    iccid: str = "89490200001234567890"
    imsi: str = "262011234567890"
    mnc_length: int | None = 2
    """EF_AD byte 4 (2 or 3); ``None``: an old SIM whose EF_AD has only 3 bytes."""
    spn: str | None = "Emulated"
    """Service provider name (``+CSPN``); None: the SIM has none (``+CME ERROR: 100``)."""
    pin: str | None = None
    """PIN the SIM asks for at power-on; None: no PIN lock."""
    working_apns: frozenset[str] | None = None
    """APNs that give a data link; None: any APN, including an empty one."""
    operator: str = "Emulated Net"
    """Home network name in ``+COPS?``."""
    apn_credentials: tuple[tuple[str, str, str], ...] = ()
    """(APN, user name, password) the network checks on a PPP call to that APN (the PPP data
    path's ``credentials="sim"``); an APN not listed takes any credentials."""
    sms_capacity: int = 20
    """Messages the SIM's store (``"SM"``) holds; a full store takes no more."""
    own_numbers: tuple[str, ...] = ()
    """The subscriber's numbers in EF_MSISDN, as ``AT+CNUM`` lists them (a leading ``+``: type
    145, else 129); () as on many SIMs: ``AT+CNUM`` answers only ``OK``."""

    @classmethod
    def for_network(cls, mcc_mnc: str, **kwargs: object) -> SimCard:
        """A SIM of network ``mcc_mnc`` (5 or 6 digits: the MNC length follows from it)."""
        if not (mcc_mnc.isdigit() and len(mcc_mnc) in (5, 6)):
            raise ValueError(f"MCC+MNC {mcc_mnc!r} must be 5 or 6 digits, e.g. 26201 or 310410")
        imsi = (mcc_mnc + "1234567890")[:15]
        return cls(imsi=imsi, mnc_length=len(mcc_mnc) - 3, **kwargs)  # type: ignore[arg-type]

    @property
    def plmn(self) -> str:
        return self.imsi[: 3 + (self.mnc_length or 2)]

    def apn_works(self, apn: str) -> bool:
        return self.working_apns is None or apn in self.working_apns


class DataPath(Protocol):
    """Hook for a data path behind a dial (a later step wires a veth into a network namespace).

    ``connected`` is called after ``CONNECT`` (mode ``"ppp"``, bytes from the host then arrive in
    ``received`` and ``send`` writes to the host) or after a successful ECM dial (mode ``"ecm"``,
    no bytes over the PTY; called before the dial's reply is written, so a network interface the
    hook makes exists when the host sees ``OK``). ``disconnected`` follows once per call, whatever
    ended it: a hang-up or disconnect command, the network (``drop``), lost registration or
    signal, SIM removal, ``CFUN``/``CGATT``/``CGACT`` turning the context off, a reboot or the
    port vanishing. Called from the emulator's thread with its lock held: return quickly.
    """

    def connected(self, apn: str, mode: str, send: Callable[[bytes], None]) -> None: ...

    def received(self, data: bytes) -> None: ...

    def disconnected(self) -> None: ...


@dataclass(slots=True)
class _Settings:
    """What ATZ and a reboot restore."""

    echo: bool = True
    verbose: bool = True
    cmee: int = 0
    creg_n: int = 0
    cgreg_n: int = 0
    cereg_n: int = 0
    cops_format: int = 0
    cscs: str = "IRA"
    cmgf: int = 0
    cgerep: int = 0
    """``+CGEREP`` mode: 0 no ``+CGEV`` reports, 1 or 2 reported (no data mode here to buffer in)."""
    cnmi_mode: int = 2
    """``+CNMI`` <mode>: 0 keeps indications in the modem (none sent), 1 and 2 send them."""
    cnmi_mt: int = 1
    """``+CNMI`` <mt>: 0 store quietly, 1 store and send ``+CMTI``, 2 send ``+CMT`` (not stored),
    3 as 1 here (class 3 only goes direct). The defaults are Quectel's (2,1)."""


@dataclass(slots=True)
class Faults:
    """Faults armed for the next commands (set by :class:`~hil.modememu.emulator.ModemEmulator`)."""

    hung: bool = False
    dial_failures: int = 0
    """Dials still to fail with NO CARRIER (-1: all)."""
    late_reply_s: float | None = None
    """Hold back the next command's reply this long."""
    reboot_next: bool = False
    """Reboot instead of answering the next command."""


@dataclass(slots=True)
class _Reply:
    info: list[str] = field(default_factory=list)
    final: str = "OK"
    after: Callable[[], None] | None = None
    """Runs after the reply is written (reset, data mode, URCs that follow an OK)."""
    prompt: bool = False
    """Ask for a payload with ``> `` instead of a final result (``+CMGS``)."""
    delay_s: float = 0.0
    """The network's time for this command (attach, PDP activation): the reply waits that long."""


@dataclass(frozen=True, slots=True)
class NetworkDelays:
    """How long the network takes, in seconds (all 0 by default: the emulator answers at once).

    ``attach_s``: a PS attach (``AT+CGATT=1`` while detached).
    ``pdp_activation_s``: a PDP context activation (``AT+CGACT=1``, ``ATD*99#`` before its
    ``CONNECT``, a vendor ECM dial). ``sms_delivery_s``: from :meth:`ModemModel.receive_sms` to the
    message reaching the modem (the service centre's part of a delivery).

    Raises ValueError (from the constructor) for a negative delay.
    """

    attach_s: float = 0.0
    pdp_activation_s: float = 0.0
    sms_delivery_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("attach_s", "pdp_activation_s", "sms_delivery_s"):
            if not 0 <= getattr(self, name) <= 600:
                raise ValueError(
                    f"network delay {name} = {getattr(self, name)} s is out of range: use 0-600 s"
                )


@dataclass(frozen=True, slots=True)
class SentSms:
    """A message the host sent with ``AT+CMGS``: ``body`` is text, or bytes for 8-bit data."""

    recipient: str
    body: str | bytes
    reference: int


@dataclass(slots=True)
class _SmsPrompt:
    recipient: str | None
    """Text mode: the number from the command; PDU mode: None (it is in the PDU)."""
    length: int | None
    """PDU mode: the TPDU length the command gave."""
    data: bytearray = field(default_factory=bytearray)


class _CmdError(Exception):
    def __init__(self, code: int | None, *, cms: bool = False) -> None:
        super().__init__(code)
        self.code = code
        """+CME (or with ``cms`` +CMS) error number; None: plain ERROR."""
        self.cms = cms


CMS_OPERATION_NOT_ALLOWED = 302
CMS_OPERATION_NOT_SUPPORTED = 303
CMS_INVALID_PDU_PARAMETER = 304
CMS_INVALID_TEXT_PARAMETER = 305
CMS_SIM_NOT_INSERTED = 310
CMS_SIM_PIN_REQUIRED = 311
CMS_INVALID_INDEX = 321
CMS_NO_NETWORK_SERVICE = 331


class ModemModel:
    """State and AT interpreter of one emulated modem."""

    def __init__(
        self,
        profile: EmuProfile,
        sim: SimCard | None,
        write: Write,
        schedule: Schedule,
        *,
        boot_delay_s: float = 0.05,
        extra_ok: tuple[str, ...] = (),
        data_path: DataPath | None = None,
    ) -> None:
        self.profile = profile
        self._plus = 0
        self.sim = sim
        self.last_sim = sim or SimCard()
        """The SIM inside, or the one last removed (what a hand-run ``sim insert`` puts back)."""
        self._write = write
        self._schedule = schedule
        self.boot_delay_s = boot_delay_s
        self.extra_ok = tuple(x.upper() for x in (*profile.extra_ok, *extra_ok))
        self.data_path = data_path
        self.faults = Faults()
        self.delays = NetworkDelays()
        """The network's times; set them to play a slow GPRS network."""
        self.settings = _Settings(cmee=profile.default_cmee)
        self.commands: list[str] = []
        """Every command line received, in order (for tests)."""
        self.on_command: Callable[[str], None] | None = None
        self._line = bytearray()
        self._booting = False
        self.network_stat = STAT_HOME
        self.rssi, self.ber = 20, 99
        self.ecm_call: int | None = None
        """The context id of the ECM call the data path was told of (None: no call)."""
        self.power_on_cfun = 1
        """``+CFUN`` after a power-on: 4 stands for a modem whose firmware was left in flight mode."""
        self.urc_with_n = False
        """Registration URCs carry the leading ``<n>`` as in the query's reply (``+CREG: 2,1,...``),
        as some modems send them (ModemManager's test_cgreg2_x220_unsolicited, _md400_)."""
        self.sms_store = SmsStore((sim or SimCard()).sms_capacity)
        """The SIM's message store; it keeps its messages over reboots (a new SIM brings its own)."""
        self.sms_waiting: deque[IncomingSms] = deque()
        """Messages the network holds for us: the store was full (memory capacity exceeded), or
        the modem was off; delivered in order once there is room."""
        self.sms_sent: list[SentSms] = []
        """Messages the host sent (``AT+CMGS``), in order."""
        self.on_sms_sent: Callable[[SentSms], None] | None = None
        """Called with each message the host sent, as the network takes it (a rig that plays the
        network hands it to another emulator's ``receive_sms``)."""
        self._sms_prompt: _SmsPrompt | None = None
        self._message_reference = 0
        self.sms_rejected = 0
        """Messages that found the store full when they arrived."""
        self._power_on_state()

    # ----------------------------------------------------------------------------- state helpers

    def _new_settings(self) -> _Settings:
        return _Settings(cmee=self.profile.default_cmee, cmgf=1 if self.profile.sms_text_only else 0)

    def _power_on_state(self) -> None:
        self.settings = self._new_settings()
        self._sms_prompt = None
        self.cfun = self.power_on_cfun
        self.pin_ok = self.sim is None or self.sim.pin is None
        self.pin_tries = 3
        self.cops_mode = 0
        self.contexts: dict[int, tuple[str, str]] = {}
        self.active: set[int] = set()
        self.detached = False
        self.data_mode = False
        self._reported_stat = self.registration_stat()
        self._check_ecm_call()

    def sim_ready(self) -> bool:
        return self.sim is not None and self.pin_ok

    def registration_stat(self) -> int:
        if self.cfun != 1 or not self.sim_ready() or self.cops_mode == 2:
            return STAT_NOT_REGISTERED
        return self.network_stat

    def registered(self) -> bool:
        return self.registration_stat() in (STAT_HOME, STAT_ROAMING)

    # ----------------------------------------------------------------------------------- output

    def send_urc(self, line: str) -> None:
        """Write one unsolicited line (dropped while the modem is off or rebooting)."""
        if self._booting:
            return
        self._write(f"\r\n{line}\r\n".encode())

    def _format_reply(self, reply: _Reply) -> bytes:
        if self.settings.verbose:
            body = "\r\n" + "\r\n".join(reply.info) + "\r\n" if reply.info else ""
            return (body + f"\r\n{reply.final}\r\n").encode()
        body = "".join(f"{line}\r\n" for line in reply.info)
        return (body + NUMERIC_FINAL.get(reply.final, reply.final) + "\r").encode()

    def _error(self, code: int | None, *, cms: bool = False) -> str:
        if code is None or self.settings.cmee == 0:
            return "ERROR"
        if cms:
            return f"+CMS ERROR: {code}"
        if self.settings.cmee == 2:
            return f"+CME ERROR: {CME_TEXT.get(code, 'unknown')}"
        return f"+CME ERROR: {code}"

    # ------------------------------------------------------------------------------------ input

    def feed(self, data: bytes) -> None:
        """Bytes from the host."""
        if self.faults.hung or self._booting:
            return
        if self._sms_prompt is not None:
            data = self._prompt_input(data)
        if self.data_mode:
            if self._escape_seen(data):
                self._hang_up()
                self._write(self._format_reply(_Reply()))
            elif self.data_path is not None:
                self.data_path.received(data)
            return
        for position, byte in enumerate(data):
            if byte == 0x0D:
                line = self._line.decode("latin-1").strip("\n \t\x00")
                self._line.clear()
                if line:
                    self._command(line)
                if self._sms_prompt is not None:
                    self.feed(data[position + 1 :])  # the message follows the prompt
                    return
                if not self._in_command_mode():
                    return  # the rest of this chunk is data, or falls into a reboot or a hang
            elif byte == 0x08:
                del self._line[-1:]
            elif byte != 0x0A or self._line:
                self._line.append(byte)
                if len(self._line) > 1024:
                    self._line.clear()

    def _escape_seen(self, data: bytes) -> bool:
        """``+++`` written on its own (the pluses may come one write each, as chat(8) sends them).
        This stands in for V.250's guard times: "+++" inside a write of PPP frames is data."""
        if data and data.count(b"+") == len(data):
            self._plus += len(data)
            if self._plus == 3:
                self._plus = 0
                return True
            if self._plus > 3:
                self._plus = 0
            return False
        self._plus = 0
        return False

    def _in_command_mode(self) -> bool:
        return not (self.data_mode or self._booting or self.faults.hung)

    def _command(self, line: str) -> None:
        self.commands.append(line)
        if self.on_command is not None:
            self.on_command(line)
        if self.settings.echo:
            self._write(line.encode("latin-1") + b"\r")
        if not line.upper().startswith("AT"):
            return  # real modems ignore lines that do not start with AT
        if self.faults.reboot_next:
            self.faults.reboot_next = False
            self.reboot()
            return
        reply = self._execute(line)
        if reply.prompt and reply.final == "OK":
            self._write(b"\r\n> ")
            return
        self._sms_prompt = None
        data = self._format_reply(reply)
        delay, self.faults.late_reply_s = self.faults.late_reply_s, None
        if delay is None and reply.delay_s > 0:
            delay = reply.delay_s
        after = reply.after
        if delay is not None:

            def late() -> None:
                self._write(data)
                if after is not None:
                    after()

            self._schedule(delay, late)
            return
        self._write(data)
        if after is not None:
            after()
        if self.sms_waiting:
            self._deliver_waiting()  # a command brought the radio back (CFUN=1, a PIN, a new SIM)

    # ------------------------------------------------------------------------------ interpreter

    def _execute(self, line: str) -> _Reply:
        reply = _Reply()
        try:
            for cmd in _split_commands(line):
                self._one(cmd, reply)
                if reply.final != "OK":
                    break
        except _CmdError as exc:
            reply.final = self._error(exc.code, cms=exc.cms)
        self._check_ecm_call()  # CGACT=0, CGATT=0, CFUN=0/4, ATH or the disconnect command
        return reply

    def _one(self, cmd: str, reply: _Reply) -> None:
        up = cmd.upper()
        p = self.profile
        if up in ("AT", ""):
            return
        if up.startswith("ATD"):
            self._dial(up, reply)
            return
        basic = re.fullmatch(r"AT(E|V|Q|Z|I|H|&F)(\d*)", up)
        if basic:
            self._basic(basic.group(1), basic.group(2), reply)
            return
        if up == p.reset_command or up == "AT+CFUN=1,1":
            reply.after = self.reboot
            return
        if up == p.iccid_command or (p.iccid_command == "AT+QCCID" and up == "AT+CCID"):
            self._need_sim(pin=False)
            assert self.sim is not None
            prefix = p.iccid_reply_prefix if up == p.iccid_command else "+CCID: "
            reply.info.append(prefix + self.sim.iccid)
            return
        if p.ecm_dial is not None and up.startswith(p.ecm_dial):
            self._ecm_dial(up, cmd, reply)
            return
        name, op, args = _parse_extended(up)
        handler = _HANDLERS.get(name)
        if handler is None or (name in ("+CEREG", "+CESQ") and not p.lte):
            if any(up.startswith(x) for x in self.extra_ok):
                return
            raise _CmdError(None)
        handler(self, op, args, reply, cmd)

    def _basic(self, letter: str, digits: str, reply: _Reply) -> None:
        value = int(digits) if digits else 0
        if letter == "E":
            self.settings.echo = value == 1
        elif letter == "V":
            self.settings.verbose = value == 1
        elif letter in ("Z", "&F"):
            self.settings = self._new_settings()
        elif letter == "I":
            reply.info.extend(self.profile.ati)
        elif letter == "H":
            self._hang_up()

    def _need_sim(self, pin: bool = True) -> None:
        if self.sim is None:
            raise _CmdError(10)
        if pin and not self.pin_ok:
            raise _CmdError(12 if self.pin_tries <= 0 else 11)

    # ----------------------------------------------------------------------------- registration

    def update_registration(self) -> None:
        """Send registration URCs for every enabled +CREG/+CGREG/+CEREG whose stat changed."""
        stat = self.registration_stat()
        if stat == self._reported_stat:
            return
        self._reported_stat = stat
        if not self.registered():
            self.active.clear()
            self._check_ecm_call()
        for name, n in (
            ("+CREG", self.settings.creg_n),
            ("+CGREG", self.settings.cgreg_n),
            ("+CEREG", self.settings.cereg_n if self.profile.lte else 0),
        ):
            if n:
                self.send_urc(self._reg_line(name, n, stat, urc=True))

    def _reg_line(self, name: str, n: int, stat: int, *, urc: bool) -> str:
        fields = [str(stat)] if urc and not self.urc_with_n else [str(n), str(stat)]
        if n >= 2 and stat in (STAT_HOME, STAT_ROAMING):
            area = '"1A2B"' if name != "+CEREG" else '"2B3C"'
            fields += [area, '"01C3D4E5"']
            if self.profile.act:
                fields.append(str(self.profile.act))
        return f"{name}: {','.join(fields)}"

    # ---------------------------------------------------------------------------------- reboots

    def reboot(self) -> None:
        """Go silent for ``boot_delay_s``, then come back with power-on state and boot URCs."""
        self.end_calls()
        self._booting = True
        self._line.clear()

        def boot() -> None:
            self._booting = False
            self._power_on_state()
            self.send_boot_urcs()
            self._deliver_waiting()

        self._schedule(self.boot_delay_s, boot)

    def reset_silently(self) -> None:
        """Power-on state without URCs (the port re-enumerated while nobody listened)."""
        self._booting = False
        self._line.clear()
        self.end_calls()
        self._power_on_state()

    def send_boot_urcs(self) -> None:
        sim_lines = ("+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE", "SMS DONE", "PB DONE")
        for line in self.profile.boot_urcs:
            text = line
            if line == "+CPIN: READY":
                if self.sim is None:
                    continue
                if not self.pin_ok:
                    text = "+CPIN: SIM PIN"
            if line == "^SIMST: 1" and self.sim is None:
                text = "^SIMST: 255"
            if line in sim_lines and self.sim is None:
                continue
            self.send_urc(text)

    # ------------------------------------------------------------------------------------- SIM

    def remove_sim(self) -> None:
        if self.sim is None:
            return
        self.last_sim = self.sim
        self.sim = None
        self.pin_ok = True
        self.end_calls()
        for line in self.profile.sim_removed_urcs:
            self.send_urc(line)
        self.update_registration()

    def insert_sim(self, sim: SimCard) -> None:
        if self.sim is not None:
            self.remove_sim()
        if sim != self.last_sim:
            self.sms_store = SmsStore(sim.sms_capacity)
        self.sim = self.last_sim = sim
        self.pin_ok = sim.pin is None
        self.pin_tries = 3
        for line in self.profile.sim_inserted_urcs:
            locked = line == "+CPIN: READY" and not self.pin_ok
            self.send_urc("+CPIN: SIM PIN" if locked else line)
        self.update_registration()

    # -------------------------------------------------------------------------------- data calls

    def _context_apn(self, cid: int) -> str:
        return self.contexts.get(cid, ("IP", ""))[1]

    def _dial(self, up: str, reply: _Reply) -> None:
        m = re.fullmatch(r"ATDT?\*99(?:\*\*\*(\d+))?#", up)
        if not m:
            reply.final = "NO CARRIER"  # a voice or other call: a data modem has none
            return
        cid = int(m.group(1) or 1)
        apn = self._context_apn(cid)
        if self.faults.dial_failures:
            if self.faults.dial_failures > 0:
                self.faults.dial_failures -= 1
            reply.final = "NO CARRIER"
            return
        if not self.registered() or self.detached or self.sim is None or not self.sim.apn_works(apn):
            reply.final = "NO CARRIER"
            return
        reply.final = "CONNECT"
        reply.delay_s = self.delays.pdp_activation_s

        def enter_data() -> None:
            self.data_mode = True
            self._plus = 0
            self.active.add(cid)
            if self.data_path is not None:
                self.data_path.connected(apn, "ppp", self._write)

        reply.after = enter_data

    def _hang_up(self) -> None:
        was = self.data_mode
        self.data_mode = False
        self.active.clear()
        if was and self.data_path is not None:
            self.data_path.disconnected()

    def drop_carrier(self) -> None:
        """The network ended the data call: a PPP call sends ``NO CARRIER`` and returns to
        command mode; an ECM call ends (with the family's URC, if it has one)."""
        if self.data_mode:
            self._hang_up()
            self.send_urc("NO CARRIER")
        elif self.ecm_call is not None:
            cid = self.ecm_call
            self.active.discard(cid)
            self._check_ecm_call()
            if self.profile.ecm_ended_urc is not None:
                self.send_urc(self.profile.ecm_ended_urc)
            if self.settings.cgerep:
                self.send_urc(f"+CGEV: NW PDN DEACT {cid}")

    def end_calls(self) -> None:
        """Every data call ends at once (reset, SIM removal, the port vanishing): no URCs."""
        if self.data_mode:
            self._hang_up()
        self.active.clear()
        self._check_ecm_call()

    def _check_ecm_call(self) -> None:
        """Tell the data path the ECM call ended once its context is no longer active."""
        cid = self.ecm_call
        if cid is not None and cid not in self.active:
            self.ecm_call = None
            if self.data_path is not None:
                self.data_path.disconnected()

    def _ecm_dial(self, up: str, cmd: str, reply: _Reply) -> None:
        args = _split_args(up.split("=", 1)[1]) if "=" in up else []
        raw_args = _split_args(cmd.split("=", 1)[1]) if "=" in cmd else []
        if self.profile.ecm_dial == "AT^NDISDUP=":
            # AT^NDISDUP=<cid>,<connect>[,"<apn>"[,...]]
            cid = int(args[0]) if args and args[0].isdigit() else 1
            connect = len(args) > 1 and args[1] == "1"
            if len(raw_args) > 2:
                self.contexts[cid] = ("IP", raw_args[2].strip('"'))
        else:
            # AT+QNETDEVCTL=<op>,<cid>[,<urc>] and AT$QCRMCALL=<action>,<instance>
            connect = bool(args) and args[0] == "1"
            cid = int(args[1]) if len(args) > 1 and args[1].isdigit() else 1
        if not connect:
            self.active.discard(cid)  # the data path hears of it in _check_ecm_call
            return
        self._need_sim()
        assert self.sim is not None
        apn = self._context_apn(cid)
        failing = bool(self.faults.dial_failures)
        if failing and self.faults.dial_failures > 0:
            self.faults.dial_failures -= 1
        ok = not failing and self.registered() and not self.detached and self.sim.apn_works(apn)
        if self.profile.ecm_connected_urc is not None:  # Huawei: OK now, the outcome as a URC
            urc = self.profile.ecm_connected_urc if ok else '^NDISSTAT: 0,33,,"IPV4"'
            reply.after = lambda: self.send_urc(urc)
        elif not ok:
            raise _CmdError(533 if self.registered() else 30)
        else:
            reply.info.extend(self.profile.ecm_dial_reply)
        if ok:
            reply.delay_s = self.delays.pdp_activation_s
            self.active.add(cid)
            if self.ecm_call is None:  # dialling again during a call keeps it
                self.ecm_call = cid
                if self.data_path is not None:
                    self.data_path.connected(apn, "ecm", self._write)

    # ---------------------------------------------------------------------------- short messages

    def receive_sms(self, message: IncomingSms) -> None:
        """The network delivers ``message``: shown at once as ``+CMT`` (``+CNMI`` <mt> 2), or stored
        and indicated as ``+CMTI`` (<mt> 1 or 3) or stored quietly (<mt> 0, or <mode> 0). In data
        mode a direct message is stored instead, and indications wait for ``AT+CMGL``. A full
        store (or a modem that is off, booting or without SIM) leaves the message at the network,
        which delivers it once there is room (``AT+CMGD``) or the modem is back."""
        if self.delays.sms_delivery_s > 0:
            self._schedule(self.delays.sms_delivery_s, lambda: self._reach_modem(message))
        else:
            self._reach_modem(message)

    def _reach_modem(self, message: IncomingSms) -> None:
        self.sms_waiting.append(message)
        self._deliver_waiting()
        if self.sms_waiting and self.sms_waiting[-1] is message and self.sms_store.full:
            self.sms_rejected += 1

    def _sms_receivable(self) -> bool:
        return not self._booting and self.cfun == 1 and self.sim_ready()

    def _deliver_waiting(self) -> None:
        while self.sms_waiting and self._sms_receivable():
            message = self.sms_waiting[0]
            settings = self.settings
            indicate = settings.cnmi_mode != 0 and not self.data_mode and not self.faults.hung
            if indicate and settings.cnmi_mt == 2:
                self.sms_waiting.popleft()
                head, body = cmt_lines(message, text_mode=settings.cmgf == 1)
                self._write(f"\r\n{head}\r\n{body}\r\n".encode("latin-1", "replace"))
                continue
            index = self.sms_store.add(message)
            if index is None:
                return  # memory capacity exceeded: the network keeps it and tries again later
            self.sms_waiting.popleft()
            if indicate and settings.cnmi_mt in (1, 3):
                self.send_urc(f'+CMTI: "{self.sms_store.name}",{index}')

    def _need_sms_sim(self) -> None:
        if self.sim is None:
            raise _CmdError(CMS_SIM_NOT_INSERTED, cms=True)
        if not self.pin_ok:
            raise _CmdError(CMS_SIM_PIN_REQUIRED, cms=True)

    def _cmgs(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "=?":
            return
        if op != "=" or not args or not args[0]:
            raise _CmdError(None)
        self._need_sms_sim()
        if not self.registered():
            raise _CmdError(CMS_NO_NETWORK_SERVICE, cms=True)
        raw_args = _split_args(raw.split("=", 1)[1])
        if self.settings.cmgf == 1:
            self._sms_prompt = _SmsPrompt(raw_args[0].strip('"'), None)
        elif args[0].isdigit() and 0 < int(args[0]) <= 164:
            self._sms_prompt = _SmsPrompt(None, int(args[0]))
        else:
            raise _CmdError(CMS_INVALID_PDU_PARAMETER, cms=True)
        reply.prompt = True

    def _prompt_input(self, data: bytes) -> bytes:
        """Bytes after ``> ``: the message up to Ctrl-Z (send) or ESC (cancel); returns what follows."""
        prompt = self._sms_prompt
        assert prompt is not None
        for position, byte in enumerate(data):
            if byte in (0x1A, 0x1B):
                self._sms_prompt = None
                reply = _Reply()
                if byte == 0x1A:
                    try:
                        self._send_sms(prompt, reply)
                    except _CmdError as exc:
                        reply.final = self._error(exc.code, cms=exc.cms)
                self._write(self._format_reply(reply))
                return data[position + 1 :]
            if len(prompt.data) < 1024:
                prompt.data.append(byte)
        return b""

    def _send_sms(self, prompt: _SmsPrompt, reply: _Reply) -> None:
        text = prompt.data.decode("latin-1").strip("\r\n")
        body: str | bytes
        if prompt.recipient is not None:
            recipient, body = prompt.recipient, text
        else:
            pdu = decode_pdu(text)
            if isinstance(pdu, PduError) or not isinstance(pdu, Submit):
                raise _CmdError(CMS_INVALID_PDU_PARAMETER, cms=True)
            raw = bytes.fromhex(text)  # decode_pdu has read it as hex
            if len(raw) - 1 - raw[0] != prompt.length:  # the length counts the TPDU, not the SMSC field
                raise _CmdError(CMS_INVALID_PDU_PARAMETER, cms=True)
            recipient = pdu.recipient.number
            data = pdu.user_data
            body = data.data if pdu.coding.alphabet is Alphabet.DATA8 else (data.text or "")
        self._message_reference = (self._message_reference + 1) % 256
        sent = SentSms(recipient, body, self._message_reference)
        self.sms_sent.append(sent)
        reply.info.append(f"+CMGS: {self._message_reference}")
        if self.on_sms_sent is not None:
            self.on_sms_sent(sent)

    def _cnmi(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "?":
            reply.info.append(f"+CNMI: {self.settings.cnmi_mode},{self.settings.cnmi_mt},0,0,0")
        elif op == "=?":
            reply.info.append("+CNMI: (0-2),(0-3),(0,2),(0-2),(0,1)")
        elif op == "=" and args and all(a.isdigit() for a in args if a):
            mode = int(args[0]) if args[0] else self.settings.cnmi_mode
            mt = int(args[1]) if len(args) > 1 and args[1] else self.settings.cnmi_mt
            if mode > 2 or mt > 3:
                raise _CmdError(CMS_OPERATION_NOT_SUPPORTED, cms=True)
            self.settings.cnmi_mode, self.settings.cnmi_mt = mode, mt
        else:
            raise _CmdError(None)

    def _cpms(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        store = self.sms_store
        if op == "=?":
            reply.info.append('+CPMS: ("SM"),("SM"),("SM")')
            return
        self._need_sms_sim()
        counts = f"{store.used},{store.capacity}"
        if op == "?":
            reply.info.append("+CPMS: " + ",".join([f'"{store.name}",{counts}'] * 3))
        elif op == "=" and args and all(a.strip('"') == store.name for a in args[:3]):
            reply.info.append("+CPMS: " + ",".join([counts] * 3))
        elif op == "=":
            raise _CmdError(CMS_OPERATION_NOT_ALLOWED, cms=True)
        else:
            raise _CmdError(None)

    def _sms_index(self, text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= self.sms_store.capacity:
            raise _CmdError(CMS_INVALID_INDEX, cms=True)
        return int(text)

    def _cmgr(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op != "=" or not args:
            raise _CmdError(None)
        self._need_sms_sim()
        index = self._sms_index(args[0])
        stored = self.sms_store.slots.get(index)
        if stored is None:
            return  # an empty slot: OK and nothing (Quectel; others say +CMS ERROR: 321)
        lines = text_lines if self.settings.cmgf == 1 else pdu_lines
        reply.info.extend(lines("+CMGR", None, stored))
        if stored.status is MessageStatus.RECEIVED_UNREAD:
            stored.status = MessageStatus.RECEIVED_READ

    def _cmgl(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "=?":
            names = TEXT_STATUS_NAMES.values() if self.settings.cmgf == 1 else ("0", "1", "2", "3", "4")
            quoted = ",".join(f'"{name}"' if self.settings.cmgf == 1 else name for name in names)
            reply.info.append(f"+CMGL: ({quoted})")
            return
        self._need_sms_sim()
        text_mode = self.settings.cmgf == 1
        wanted = MessageStatus.RECEIVED_UNREAD
        if op == "=" and args:
            by_name = {name: status for status, name in TEXT_STATUS_NAMES.items()}
            if text_mode and args[0].strip('"') in by_name:
                wanted = by_name[args[0].strip('"')]
            elif not text_mode and args[0] in ("0", "1", "2", "3", "4"):
                wanted = MessageStatus(int(args[0]))
            else:
                code = CMS_INVALID_TEXT_PARAMETER if text_mode else CMS_INVALID_PDU_PARAMETER
                raise _CmdError(code, cms=True)
        lines = text_lines if text_mode else pdu_lines
        for index, stored in self.sms_store.listed(wanted):
            reply.info.extend(lines("+CMGL", index, stored))
            if stored.status is MessageStatus.RECEIVED_UNREAD:
                stored.status = MessageStatus.RECEIVED_READ

    def _cmgd(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "=?":
            reply.info.append(f"+CMGD: (1-{self.sms_store.capacity}),(0-4)")
            return
        if op != "=" or not args:
            raise _CmdError(None)
        self._need_sms_sim()
        flag = int(args[1]) if len(args) > 1 and args[1].isdigit() else 0
        if flag > 4:
            raise _CmdError(CMS_OPERATION_NOT_SUPPORTED, cms=True)
        index = self._sms_index(args[0]) if flag == 0 else 0
        self.sms_store.delete(index, flag)
        reply.after = self._deliver_waiting  # room again: the network sends what it held (RP-SMMA)

    # ------------------------------------------------------------------------ command handlers

    def _cmee(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "?":
            reply.info.append(f"+CMEE: {self.settings.cmee}")
        elif op == "=" and args and args[0] in ("0", "1", "2"):
            self.settings.cmee = int(args[0])
        elif op != "=?":
            raise _CmdError(None)

    def _cscs(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "?":
            reply.info.append(f'+CSCS: "{self.settings.cscs}"')
        elif op == "=?":
            reply.info.append('+CSCS: ("IRA","GSM","UCS2")')
        elif op == "=" and args and args[0].strip('"') in ("IRA", "GSM", "UCS2"):
            self.settings.cscs = args[0].strip('"')
        else:
            raise _CmdError(None)

    def _cmgf(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        text_only = self.profile.sms_text_only
        if op == "?":
            reply.info.append(f"+CMGF: {self.settings.cmgf}")
        elif op == "=?":
            reply.info.append("+CMGF: (1)" if text_only else "+CMGF: (0,1)")
        elif op == "=" and args and args[0] in ("0", "1") and not (text_only and args[0] == "0"):
            self.settings.cmgf = int(args[0])
        else:
            raise _CmdError(None)

    def _cpin(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if self.sim is None:
            raise _CmdError(10)
        if op == "?":
            if self.pin_ok:
                reply.info.append("+CPIN: READY")
            else:
                reply.info.append("+CPIN: SIM PUK" if self.pin_tries <= 0 else "+CPIN: SIM PIN")
            return
        if op != "=" or not args:
            raise _CmdError(None)
        if self.pin_ok:
            raise _CmdError(3)
        if self.pin_tries <= 0:
            raise _CmdError(12)
        if args[0].strip('"') != self.sim.pin:
            self.pin_tries -= 1
            raise _CmdError(16)
        self.pin_ok = True
        reply.after = self.update_registration

    def _cnum(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "=?":
            return
        if op:
            raise _CmdError(None)
        self._need_sim()
        assert self.sim is not None
        for number in self.sim.own_numbers:
            reply.info.append(f'+CNUM: "","{number}",{145 if number.startswith("+") else 129}')

    def _cimi(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        self._need_sim()
        assert self.sim is not None
        reply.info.append(self.sim.imsi)

    def _crsm(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op != "=" or len(args) < 2:
            raise _CmdError(None)
        self._need_sim(pin=False)
        assert self.sim is not None
        command, file_id = int(args[0]), int(args[1])
        length = int(args[4]) if len(args) > 4 and args[4].isdigit() else 0
        if command != 176:  # READ BINARY only
            reply.info.append("+CRSM: 109,0")
            return
        if file_id == EF_AD:
            content = "000000" + (f"{self.sim.mnc_length:02X}" if self.sim.mnc_length else "")
        elif file_id == EF_ICCID:
            digits = self.sim.iccid + "F" * (20 - len(self.sim.iccid))
            content = "".join(digits[i + 1] + digits[i] for i in range(0, 20, 2))
        else:
            reply.info.append("+CRSM: 106,130")  # 6A82: file not found
            return
        if length > len(content) // 2:
            reply.info.append("+CRSM: 103,0")  # 6700: wrong length
            return
        if length:
            content = content[: 2 * length]
        reply.info.append(f'+CRSM: 144,0,"{content}"')

    def _cspn(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        self._need_sim()
        assert self.sim is not None
        if self.sim.spn is None:
            raise _CmdError(100)
        reply.info.append(f'+CSPN: "{self.sim.spn}",0')

    def _reg(self, op: str, args: list[str], reply: _Reply, raw: str, name: str) -> None:
        attr = {"+CREG": "creg_n", "+CGREG": "cgreg_n", "+CEREG": "cereg_n"}[name]
        if op == "?":
            stat = self.registration_stat()
            reply.info.append(self._reg_line(name, getattr(self.settings, attr), stat, urc=False))
        elif op == "=" and args and args[0] in ("0", "1", "2"):
            setattr(self.settings, attr, int(args[0]))
        elif op != "=?":
            raise _CmdError(None)

    def _cops(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        roaming = self.registration_stat() == STAT_ROAMING
        plmn = ROAMING_PLMN if roaming or self.sim is None else self.sim.plmn
        name = ROAMING_OPERATOR if roaming or self.sim is None else self.sim.operator
        if op == "?":
            if self.registered():
                oper = plmn if self.settings.cops_format == 2 else name
                act = f",{self.profile.act}" if self.profile.act else ""
                reply.info.append(f'+COPS: {self.cops_mode},{self.settings.cops_format},"{oper}"{act}')
            else:
                reply.info.append(f"+COPS: {self.cops_mode}")
        elif op == "=?":
            reply.info.append(f'+COPS: (2,"{name}","{name[:8]}","{plmn}",{self.profile.act}),,(0-4),(0-2)')
        elif op == "=" and args:
            mode = int(args[0]) if args[0].isdigit() else -1
            if mode == 3 and len(args) > 1 and args[1] in ("0", "1", "2"):
                self.settings.cops_format = int(args[1])
            elif mode in (0, 1, 4):
                if self.sim is None:
                    raise _CmdError(10)
                self.cops_mode = 0
                if self.network_stat == STAT_DENIED:
                    reply.after = self.update_registration
                    raise _CmdError(30)
                reply.after = self.update_registration
            elif mode == 2:
                self.cops_mode = 2
                reply.after = self.update_registration
            else:
                raise _CmdError(None)
        else:
            raise _CmdError(None)

    def _csq(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "=?":
            reply.info.append("+CSQ: (0-31,99),(0-7,99)")
            return
        rssi, ber = (self.rssi, self.ber) if self.cfun == 1 else (99, 99)
        reply.info.append(f"+CSQ: {rssi},{ber}")

    def _cesq(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if self.cfun != 1 or self.rssi == 99:
            reply.info.append("+CESQ: 99,99,255,255,255,255")
        else:
            rsrp = min(97, max(0, 2 * self.rssi + 20))  # a plausible RSRP index for the RSSI
            reply.info.append(f"+CESQ: 99,99,255,255,20,{rsrp}")

    def _cgdcont(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "?":
            for cid, (pdp, apn) in sorted(self.contexts.items()):
                reply.info.append(f'+CGDCONT: {cid},"{pdp}","{apn}","0.0.0.0",0,0')
            return
        if op == "=?":
            reply.info.append('+CGDCONT: (1-16),"IP",,,(0-2),(0-4)')
            return
        raw_args = _split_args(raw.split("=", 1)[1]) if "=" in raw else []
        if not raw_args or not raw_args[0].isdigit():
            raise _CmdError(None)
        cid = int(raw_args[0])
        if len(raw_args) == 1:
            self.contexts.pop(cid, None)
            return
        pdp = raw_args[1].strip('"').upper()
        if pdp not in ("IP", "IPV6", "IPV4V6", "PPP"):
            raise _CmdError(None)
        apn = raw_args[2].strip('"') if len(raw_args) > 2 else ""
        self.contexts[cid] = (pdp, apn)

    def _cgatt(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "?":
            reply.info.append(f"+CGATT: {int(self.registered() and not self.detached)}")
        elif op == "=" and args and args[0] in ("0", "1"):
            if args[0] == "0":
                self.detached = True
                self.active.clear()
            elif not self.registered():
                raise _CmdError(30)
            else:
                if self.detached:
                    reply.delay_s = self.delays.attach_s
                self.detached = False
        elif op != "=?":
            raise _CmdError(None)

    def _cgact(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "?":
            for cid in sorted(self.contexts):
                reply.info.append(f"+CGACT: {cid},{int(cid in self.active)}")
            return
        if op != "=" or not args or args[0] not in ("0", "1"):
            raise _CmdError(None)
        cids = [int(a) for a in args[1:] if a.isdigit()] or sorted(self.contexts) or [1]
        if args[0] == "0":
            self.active.difference_update(cids)
            return
        self._need_sim()
        assert self.sim is not None
        if not self.registered() or self.detached:
            raise _CmdError(30)
        for cid in cids:
            if not self.sim.apn_works(self._context_apn(cid)):
                raise _CmdError(533)
            if cid not in self.active:
                reply.delay_s = self.delays.pdp_activation_s
            self.active.add(cid)

    def _cgpaddr(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        cids = [int(a) for a in args if a.isdigit()] or sorted(self.contexts)
        for cid in cids:
            addr = f"10.64.0.{cid + 1}" if cid in self.active else "0.0.0.0"
            reply.info.append(f'+CGPADDR: {cid},"{addr}"')

    def _cfun(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "?":
            reply.info.append(f"+CFUN: {self.cfun}")
        elif op == "=" and args and args[0] in ("0", "1", "4"):
            self.cfun = int(args[0])
            if self.cfun != 1:
                self.active.clear()
            reply.after = self.update_registration
        elif op != "=?":
            raise _CmdError(None)

    def _cgerep(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "?":
            reply.info.append(f"+CGEREP: {self.settings.cgerep},0")
        elif op == "=?":
            reply.info.append("+CGEREP: (0-2),(0,1)")
        elif op == "=" and args and args[0] in ("0", "1", "2") and all(a in ("0", "1") for a in args[1:2]):
            self.settings.cgerep = int(args[0])
        else:
            raise _CmdError(None)

    def _gcap(self, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        reply.info.append("+GCAP: +CGSM")


def _ident_handler(attr: str) -> Callable[[ModemModel, str, list[str], _Reply, str], None]:
    def handler(model: ModemModel, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        if op == "=?":
            return
        reply.info.append(getattr(model.profile, attr))

    return handler


def _reg_handler(name: str) -> Callable[[ModemModel, str, list[str], _Reply, str], None]:
    def handler(model: ModemModel, op: str, args: list[str], reply: _Reply, raw: str) -> None:
        model._reg(op, args, reply, raw, name)

    return handler


_HANDLERS: dict[str, Callable[[ModemModel, str, list[str], _Reply, str], None]] = {
    "+CMEE": ModemModel._cmee,
    "+CSCS": ModemModel._cscs,
    "+CMGF": ModemModel._cmgf,
    "+CNMI": ModemModel._cnmi,
    "+CPMS": ModemModel._cpms,
    "+CNUM": ModemModel._cnum,
    "+CMGR": ModemModel._cmgr,
    "+CMGL": ModemModel._cmgl,
    "+CMGD": ModemModel._cmgd,
    "+CMGS": ModemModel._cmgs,
    "+CGMI": _ident_handler("manufacturer"),
    "+GMI": _ident_handler("manufacturer"),
    "+CGMM": _ident_handler("model"),
    "+GMM": _ident_handler("model"),
    "+CGMR": _ident_handler("revision"),
    "+GMR": _ident_handler("revision"),
    "+CGSN": _ident_handler("imei"),
    "+GSN": _ident_handler("imei"),
    "+GCAP": ModemModel._gcap,
    "+CPIN": ModemModel._cpin,
    "+CIMI": ModemModel._cimi,
    "+CRSM": ModemModel._crsm,
    "+CSPN": ModemModel._cspn,
    "+CREG": _reg_handler("+CREG"),
    "+CGREG": _reg_handler("+CGREG"),
    "+CEREG": _reg_handler("+CEREG"),
    "+COPS": ModemModel._cops,
    "+CSQ": ModemModel._csq,
    "+CESQ": ModemModel._cesq,
    "+CGDCONT": ModemModel._cgdcont,
    "+CGATT": ModemModel._cgatt,
    "+CGACT": ModemModel._cgact,
    "+CGPADDR": ModemModel._cgpaddr,
    "+CFUN": ModemModel._cfun,
    "+CGEREP": ModemModel._cgerep,
}


def _split_args(text: str) -> list[str]:
    """Comma-separated arguments; commas inside quotes do not split."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    out.append("".join(current).strip())
    return out


def _parse_extended(up: str) -> tuple[str, str, list[str]]:
    """``AT+CMD=a,b`` → (``+CMD``, ``=``, [a, b]); ops ``""``, ``?``, ``=``, ``=?``."""
    body = up[2:]
    m = re.fullmatch(r"([+^$&][A-Z0-9]+)(=\?|\?|=)?(.*)", body)
    if not m:
        return body, "", []
    name, op, rest = m.group(1), m.group(2) or "", m.group(3)
    args = _split_args(rest) if op == "=" and rest else []
    return name, op, args


def _split_commands(line: str) -> list[str]:
    """One command line into single ``AT...`` commands.

    ``ATE0 V1 +CMEE=1`` → ``ATE0``, ``ATV1``, ``AT+CMEE=1``; ``AT+CREG=2;+CGREG=2`` → two; a dial
    takes the rest of the line. Spaces outside quotes are ignored, as V.250 says.
    """
    body = line[2:]
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch in " ;":
            i += 1
            continue
        if ch in "+^$":
            j = i
            quoted = False
            while j < n and (quoted or body[j] != ";"):
                if body[j] == '"':
                    quoted = not quoted
                j += 1
            text = body[i:j]
            if '"' not in text:
                text = text.replace(" ", "")
            out.append("AT" + text.rstrip())
            i = j
            continue
        if ch.upper() == "D":
            out.append("AT" + body[i:].replace(" ", "").rstrip(";"))
            break
        j = i + 1
        if ch == "&" and j < n:
            j += 1
        if ch.upper() == "S":  # S-register: S0=0 / S7?
            while j < n and (body[j].isdigit() or body[j] in "=?"):
                j += 1
        else:
            while j < n and body[j].isdigit():
                j += 1
        out.append("AT" + body[i:j])
        i = j
    return out or ["AT"]
