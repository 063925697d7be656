"""Auto-APN: the provider database index, the ranking of APN candidates, and the APN chooser.

The provider database is mobile-broadband-provider-info's ``serviceproviders.xml`` (format 2.0). It
is parsed with ``xml.etree.ElementTree.iterparse`` (one ``<provider>`` in memory at a time) into a
:class:`ProviderIndex` keyed by ``MCC-MNC``; the MNC keeps its length (``"310-410"`` and
``"310-41"`` are different networks), so the SIM's MNC length (byte 4 of EF_AD, read with
``AT+CRSM=176,28589,0,0,4``) decides how the IMSI is split. The device parses the file at most
once per boot: :func:`load_index` keeps a compact JSON cache next to the daemon's state, keyed by
the database's size and modification time, written atomically.

Which APNs count as internet APNs: ``<usage type="internet"/>``, an ``<apn>`` without ``<usage>``
(the file's convention for internet), and the combined types ``mms-internet-hipri`` and
``mms-internet-hipri-fota`` (some US carriers, e.g. 310-410, list their data APN only that way).

Ranking (:func:`rank_apns`, a pure function): config override → the APN that last worked for this
ICCID → the provider's internet APNs (primary network first, then the file's order; a provider whose
name matches the SIM's SPN first) → an empty APN (the network assigns its default).

:class:`ApnChooser` walks that list: it advances on an activation, dial, PPP or IPCP failure and,
when a candidate works, records it in :class:`ApnMemory`, which :class:`ApnMemoryFile` persists.
The chooser does no I/O and reads no clock.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dvrlink.modem import DEFAULT_PROVIDER_DATABASE
from dvrlink.store.files import atomic_write, move_corrupt_aside

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

log = logging.getLogger(__name__)

DEFAULT_DATABASE = DEFAULT_PROVIDER_DATABASE
"""Where Debian and Buildroot install the provider database; override it in the config."""

INTERNET_USAGES = frozenset({"internet", "mms-internet-hipri", "mms-internet-hipri-fota"})
AUTH_METHODS = frozenset({"", "pap", "chap"})
CACHE_VERSION = 1

# Countries whose networks use 3-digit MNCs (North America, parts of Latin America and India).
# Used only when the SIM does not say how long its MNC is (EF_AD shorter than 4 bytes).
THREE_DIGIT_MNC_MCCS = frozenset(
    {"302", "310", "311", "312", "313", "314", "315", "316", "334", "338", "342", "344", "346", "348"}
    | {"352", "354", "356", "358", "360", "365", "376", "405", "708", "722", "732"}
)

Writer = Callable[[Path, bytes], None]


class ApnDatabaseError(Exception):
    """The provider database cannot be used; the message names the file and says what to do."""


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class ApnSettings:
    """What the modem needs to activate a PDP context."""

    apn: str
    """The access point name; ``""`` lets the network choose its default."""
    username: str = ""
    password: str = ""
    auth: str = ""
    """``"pap"``, ``"chap"`` or ``""`` (none given: the link tries what the network offers)."""

    def __post_init__(self) -> None:
        if self.auth not in AUTH_METHODS:
            raise ValueError(f"APN auth method {self.auth!r} is not one of pap, chap or empty")


@dataclass(frozen=True, slots=True)
class ProviderApn:
    """One internet APN of one provider in the database."""

    settings: ApnSettings
    provider: str
    """The provider's name as the file spells it, e.g. ``"T-Mobile(Telekom)"``."""
    usage: str
    """The ``<usage type>``, ``"internet"`` when the file gives none."""


class ApnSource(enum.Enum):
    """Where a candidate in the ranking came from."""

    CONFIG = "config"
    LAST_WORKED = "last-worked"
    PROVIDER = "provider"
    NETWORK = "network"


@dataclass(frozen=True, slots=True)
class ApnCandidate:
    """One entry of the ranking."""

    settings: ApnSettings
    source: ApnSource
    provider: str = ""


@dataclass(frozen=True, slots=True)
class ApnConfig:
    """Auto-APN settings of the modem manager."""

    database: Path = DEFAULT_DATABASE
    """The provider database (``serviceproviders.xml``)."""
    cache: Path | None = None
    """Compact index cache; ``None`` parses the database every time."""
    override: ApnSettings | None = None
    """An APN that is always tried first (the installer knows better than the database)."""
    allow_network_apn: bool = True
    """Try an empty APN (the network's default) after all others."""


# ------------------------------------------------------------------------------------ SIM helpers


def mnc_length_from_ef_ad(data: bytes | str) -> int | None:
    """The MNC length from EF_AD (3GPP TS 31.102 4.2.18): the low nibble of byte 4, 2 or 3.

    ``data`` is the file's bytes, or the hex string of ``+CRSM: 144,0,"<hex>"``. Returns ``None``
    when the file is shorter than 4 bytes or the value is not 2 or 3 (old SIMs), so the caller
    falls back to :data:`THREE_DIGIT_MNC_MCCS`. Raises ValueError for a string that is not hex.
    """
    raw = bytes.fromhex(data) if isinstance(data, str) else data
    if len(raw) < 4:
        return None
    length = raw[3] & 0x0F
    return length if length in (2, 3) else None


def split_imsi(imsi: str, mnc_length: int | None) -> tuple[str, str]:
    """Split an IMSI into (MCC, MNC).

    ``mnc_length`` is 2 or 3 from the SIM, or ``None`` to guess by country (3 digits for
    :data:`THREE_DIGIT_MNC_MCCS`). Raises ValueError for an IMSI that is not 6–15 digits or a
    length other than 2, 3 or None.
    """
    if not (imsi.isdigit() and 6 <= len(imsi) <= 15):
        raise ValueError(f"IMSI {imsi!r} is not 6 to 15 digits; read it again with AT+CIMI")
    if mnc_length is None:
        mnc_length = 3 if imsi[:3] in THREE_DIGIT_MNC_MCCS else 2
    if mnc_length not in (2, 3):
        raise ValueError(f"MNC length {mnc_length} is not 2 or 3")
    return imsi[:3], imsi[3 : 3 + mnc_length]


# ------------------------------------------------------------------------------------------ index


def _plmn_key(mcc: str, mnc: str) -> str:
    return f"{mcc}-{mnc}"


@dataclass(slots=True)
class _Provider:
    name: str
    primary: bool | None
    order: int
    networks: list[str] = field(default_factory=list)
    apns: list[ProviderApn] = field(default_factory=list)


def _primary_rank(primary: bool | None) -> int:
    return 0 if primary is True else (2 if primary is False else 1)


class ProviderIndex:
    """Internet APNs by network (MCC and MNC, MNC with its length), in ranking order.

    Within one network the order is: providers marked ``primary="true"``, then unmarked ones,
    then ``primary="false"`` ones (MVNOs), each group in file order; each provider's APNs in file
    order; exact duplicates (same APN and credentials) once.
    """

    __slots__ = ("_plmns",)

    def __init__(self, plmns: Mapping[str, Sequence[ProviderApn]]) -> None:
        self._plmns: dict[str, tuple[ProviderApn, ...]] = {k: tuple(v) for k, v in plmns.items()}

    def __len__(self) -> int:
        return len(self._plmns)

    def lookup(self, mcc: str, mnc: str) -> tuple[ProviderApn, ...]:
        """The internet APNs for this network, or ``()`` when the database does not know it."""
        return self._plmns.get(_plmn_key(mcc, mnc), ())

    def lookup_imsi(self, imsi: str, mnc_length: int | None) -> tuple[str, str, tuple[ProviderApn, ...]]:
        """(MCC, MNC, APNs) for a SIM; see :func:`split_imsi` for ``mnc_length``.

        With an unknown MNC length and no match for the guess, the other length is tried.
        Raises ValueError for a malformed IMSI.
        """
        mcc, mnc = split_imsi(imsi, mnc_length)
        found = self.lookup(mcc, mnc)
        if not found and mnc_length is None:
            other = imsi[3:6] if len(mnc) == 2 else imsi[3:5]
            alt = self.lookup(mcc, other)
            if alt:
                return mcc, other, alt
        return mcc, mnc, found

    # -- parsing

    @classmethod
    def parse(cls, path: Path) -> ProviderIndex:
        """Parse ``serviceproviders.xml``.

        Raises:
            ApnDatabaseError: the file is missing, unreadable, not XML, or not the expected format.
        """
        import xml.etree.ElementTree as ET  # noqa: PLC0415  (only when the database is parsed)

        path = Path(path)
        providers: list[_Provider] = []
        try:
            with path.open("rb") as stream:
                providers = _parse_providers(stream, path)
        except FileNotFoundError:
            raise ApnDatabaseError(
                f"provider database {path} not found: install mobile-broadband-provider-info "
                "(Debian package, or the Buildroot package of the same name), point the modem "
                "config's APN database setting at a copy, or set the APN in the config"
            ) from None
        except OSError as exc:
            raise ApnDatabaseError(
                f"cannot read provider database {path}: {exc.strerror}; check its permissions"
            ) from exc
        except ET.ParseError as exc:
            line, column = exc.position
            raise ApnDatabaseError(
                f"provider database {path} is not valid XML (line {line}, column {column}): "
                "reinstall mobile-broadband-provider-info or point the config at a good copy"
            ) from exc
        return cls._from_providers(providers)

    @classmethod
    def _from_providers(cls, providers: Iterable[_Provider]) -> ProviderIndex:
        by_plmn: dict[str, list[_Provider]] = {}
        for provider in providers:
            for key in provider.networks:
                by_plmn.setdefault(key, []).append(provider)
        plmns: dict[str, tuple[ProviderApn, ...]] = {}
        for key, group in by_plmn.items():
            group.sort(key=lambda p: (_primary_rank(p.primary), p.order))
            seen: set[ApnSettings] = set()
            ordered: list[ProviderApn] = []
            for provider in group:
                for entry in provider.apns:
                    if entry.settings not in seen:
                        seen.add(entry.settings)
                        ordered.append(entry)
            plmns[key] = tuple(ordered)
        return cls(plmns)

    # -- cache

    def to_bytes(self, source: Mapping[str, int | str] | None = None) -> bytes:
        """Compact JSON of the index; ``source`` identifies the database it came from."""
        providers: dict[str, int] = {}
        plmns: dict[str, list[list[str | int]]] = {}
        for key, entries in self._plmns.items():
            rows: list[list[str | int]] = []
            for e in entries:
                index = providers.setdefault(e.provider, len(providers))
                s = e.settings
                rows.append([s.apn, s.username, s.password, s.auth, e.usage, index])
            plmns[key] = rows
        doc = {"version": CACHE_VERSION, "source": dict(source or {}), "providers": list(providers)}
        doc["plmns"] = plmns
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[ProviderIndex, dict[str, int | str]]:
        """Read :meth:`to_bytes` output; returns the index and its ``source``.

        Raises ValueError when the data is not a cache of this version.
        """
        try:
            doc = json.loads(data)
            if doc.get("version") != CACHE_VERSION:
                raise ValueError(f"cache version {doc.get('version')!r}, expected {CACHE_VERSION}")
            names: list[str] = doc["providers"]
            plmns = {
                key: [
                    ProviderApn(ApnSettings(str(a), str(u), str(p), str(auth)), names[int(i)], str(usage))
                    for a, u, p, auth, usage, i in rows
                ]
                for key, rows in doc["plmns"].items()
            }
            source = dict(doc["source"])
        except (KeyError, TypeError, IndexError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not an APN index cache: {exc}") from exc
        return cls(plmns), source


def _text(elem: ET.Element | None) -> str:
    return (elem.text or "").strip() if elem is not None else ""


def _parse_providers(stream: BinaryIO, path: Path) -> list[_Provider]:
    import xml.etree.ElementTree as ET  # noqa: PLC0415  (only when the database is parsed)

    providers: list[_Provider] = []
    root_seen = False
    # The database is a packaged system file, not peer input; expat (>= 2.4.1, which CPython 3.11
    # bundles) also caps entity expansion, so the stdlib parser is fine here.
    for event, elem in ET.iterparse(stream, events=("start", "end")):  # noqa: S314
        if event == "start":
            if not root_seen:
                root_seen = True
                if elem.tag != "serviceproviders":
                    raise ApnDatabaseError(
                        f"{path} is XML but not a provider database (root element <{elem.tag}>, "
                        "expected <serviceproviders>): point the config at serviceproviders.xml"
                    )
            continue
        if elem.tag == "provider":
            providers.append(_provider_from_element(elem, len(providers)))
            elem.clear()
        elif elem.tag == "country":
            elem.clear()
    if not root_seen:
        raise ApnDatabaseError(f"provider database {path} is empty: reinstall mobile-broadband-provider-info")
    return providers


def _provider_from_element(elem: ET.Element, order: int) -> _Provider:
    primary_attr = elem.get("primary")
    primary = None if primary_attr is None else primary_attr == "true"
    provider = _Provider(name=_text(elem.find("name")), primary=primary, order=order)
    gsm = elem.find("gsm")
    if gsm is None:
        return provider  # CDMA-only provider: nothing for a GSM/UMTS/LTE modem
    for nid in gsm.findall("network-id"):
        mcc, mnc = nid.get("mcc", ""), nid.get("mnc", "")
        if mcc.isdigit() and mnc.isdigit() and len(mcc) == 3 and len(mnc) in (2, 3):
            provider.networks.append(_plmn_key(mcc, mnc))
    for apn in gsm.findall("apn"):
        usage_elem = apn.find("usage")
        usage = usage_elem.get("type", "internet") if usage_elem is not None else "internet"
        if usage not in INTERNET_USAGES:
            continue
        auth_elem = apn.find("authentication")
        auth = auth_elem.get("method", "") if auth_elem is not None else ""
        settings = ApnSettings(
            apn=apn.get("value", "").strip(),
            username=_text(apn.find("username")),
            password=_text(apn.find("password")),
            auth=auth if auth in AUTH_METHODS else "",
        )
        provider.apns.append(ProviderApn(settings, provider.name, usage))
    return provider


def _source_id(path: Path) -> dict[str, int | str]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def load_index(
    database: Path = DEFAULT_DATABASE, cache: Path | None = None, *, writer: Writer = atomic_write
) -> ProviderIndex:
    """The index, from ``cache`` when it matches ``database`` (size and mtime), else parsed.

    A parsed index is written to ``cache`` with ``writer`` (atomic). A stale or unreadable cache is
    ignored with a log line; failing to write the cache is logged and not fatal.

    Raises:
        ApnDatabaseError: the database is missing or malformed (see :meth:`ProviderIndex.parse`).
    """
    database = Path(database)
    try:
        source = _source_id(database)
    except FileNotFoundError:
        source = {}
    if cache is not None and source:
        try:
            index, cached_source = ProviderIndex.from_bytes(Path(cache).read_bytes())
            if cached_source == source:
                return index
            log.info("APN index cache %s is for another database version; rebuilding it", cache)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("APN index cache %s unreadable (%s); rebuilding it from %s", cache, exc, database)
    index = ProviderIndex.parse(database)
    if cache is not None:
        try:
            writer(Path(cache), index.to_bytes(source))
        except OSError as exc:
            log.warning("cannot write APN index cache: %s; the database is parsed again next start", exc)
    return index


# ---------------------------------------------------------------------------------------- ranking


def rank_apns(
    *,
    override: ApnSettings | None,
    last_worked: ApnSettings | None,
    provider_apns: Sequence[ProviderApn],
    spn: str = "",
    allow_network_apn: bool = True,
) -> tuple[ApnCandidate, ...]:
    """The APN candidates in the order to try them; a pure function.

    Config override → last APN that worked for this ICCID → ``provider_apns`` (those of a provider
    whose name contains the SIM's service provider name, or is contained in it, first; otherwise
    their order) → an empty APN if ``allow_network_apn``. The same settings appear once, at their
    first place.
    """
    out: list[ApnCandidate] = []
    seen: set[ApnSettings] = set()

    def add(candidate: ApnCandidate) -> None:
        if candidate.settings not in seen:
            seen.add(candidate.settings)
            out.append(candidate)

    if override is not None:
        add(ApnCandidate(override, ApnSource.CONFIG))
    if last_worked is not None:
        add(ApnCandidate(last_worked, ApnSource.LAST_WORKED))
    wanted = spn.strip().casefold()

    def spn_match(entry: ProviderApn) -> bool:
        name = entry.provider.casefold()
        return bool(wanted) and bool(name) and (wanted in name or name in wanted)

    ordered = sorted(provider_apns, key=lambda e: 0 if spn_match(e) else 1)  # stable
    for entry in ordered:
        add(ApnCandidate(entry.settings, ApnSource.PROVIDER, entry.provider))
    if allow_network_apn:
        add(ApnCandidate(ApnSettings(""), ApnSource.NETWORK))
    return tuple(out)


# ------------------------------------------------------------------------------- memory and chooser


class ApnMemory:
    """The APN that last worked, per ICCID."""

    __slots__ = ("_by_iccid",)

    def __init__(self, by_iccid: Mapping[str, ApnSettings] | None = None) -> None:
        self._by_iccid: dict[str, ApnSettings] = dict(by_iccid or {})

    def last_worked(self, iccid: str) -> ApnSettings | None:
        return self._by_iccid.get(iccid)

    def remember(self, iccid: str, settings: ApnSettings) -> bool:
        """Record ``settings`` for ``iccid``; True when that changed the memory (so save it)."""
        if self._by_iccid.get(iccid) == settings:
            return False
        self._by_iccid[iccid] = settings
        return True

    def to_bytes(self) -> bytes:
        doc = {
            "version": 1,
            "apns": {
                iccid: {"apn": s.apn, "username": s.username, "password": s.password, "auth": s.auth}
                for iccid, s in sorted(self._by_iccid.items())
            },
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ApnMemory:
        """Raises ValueError when ``data`` is not an APN memory file."""
        try:
            doc = json.loads(data)
            if doc.get("version") != 1:
                raise ValueError(f"version {doc.get('version')!r}, expected 1")
            return cls(
                {
                    str(iccid): ApnSettings(
                        str(v["apn"]), str(v["username"]), str(v["password"]), str(v["auth"])
                    )
                    for iccid, v in doc["apns"].items()
                }
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not an APN memory file: {exc}") from exc


class ApnMemoryFile:
    """Loads and saves :class:`ApnMemory` (a small JSON file, written atomically)."""

    def __init__(self, path: Path, *, writer: Writer = atomic_write) -> None:
        self.path = Path(path)
        self._writer = writer

    def load(self) -> ApnMemory:
        """The saved memory; empty when there is none. A corrupt file is renamed aside
        (``<name>.corrupt``), logged, and an empty memory returned: the chooser then walks the
        database order again, which is slow but correct."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return ApnMemory()
        try:
            return ApnMemory.from_bytes(data)
        except ValueError as exc:
            move_corrupt_aside(
                self.path,
                str(exc),
                what="APN memory",
                instead="starting without remembered APNs",
                log=log,
                level=logging.WARNING,
            )
            return ApnMemory()

    def save(self, memory: ApnMemory) -> None:
        """Raises OSError naming the path when the directory is missing or not writable."""
        self._writer(self.path, memory.to_bytes())


class ApnFailure(enum.Enum):
    """Why a candidate did not give a data link."""

    ACTIVATION_REJECTED = "activation-rejected"
    """``+CGACT``/``+CGDCONT``/vendor dial answered with an error."""
    DIAL_FAILED = "dial-failed"
    """``ATD*99#`` answered ``NO CARRIER`` or similar."""
    PPP_FAILED = "ppp-failed"
    """pppd exited before IPCP (LCP or authentication)."""
    IPCP_FAILED = "ipcp-failed"
    """PPP came up but no IP address was negotiated."""


class ApnEvent:
    """Base of the chooser's events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ApnSelected(ApnEvent):
    """Try ``candidate`` next (``attempt`` counts from 1 out of ``total``)."""

    candidate: ApnCandidate
    attempt: int
    total: int


@dataclass(frozen=True, slots=True)
class ApnWorked(ApnEvent):
    """``candidate`` gave a data link for ``iccid``; ``memory_changed`` says whether to save."""

    iccid: str
    candidate: ApnCandidate
    memory_changed: bool


@dataclass(frozen=True, slots=True)
class ApnsExhausted(ApnEvent):
    """Every candidate failed; retry later with :meth:`ApnChooser.restart`."""

    iccid: str
    tried: tuple[tuple[ApnCandidate, ApnFailure], ...]


class ApnChooser:
    """Walks the ranked candidates for one SIM; sans-I/O.

    Use: :meth:`start` → try the selected APN → :meth:`failed` (next one) or :meth:`worked`.
    """

    def __init__(self, iccid: str, candidates: Sequence[ApnCandidate], memory: ApnMemory) -> None:
        self.iccid = iccid
        self.candidates = tuple(candidates)
        self._memory = memory
        self._index = -1
        self._tried: list[tuple[ApnCandidate, ApnFailure]] = []

    @classmethod
    def for_sim(
        cls,
        *,
        iccid: str,
        imsi: str,
        mnc_length: int | None,
        index: ProviderIndex,
        memory: ApnMemory,
        config: ApnConfig,
        spn: str = "",
    ) -> ApnChooser:
        """A chooser ranked for this SIM. Raises ValueError for a malformed IMSI."""
        _mcc, _mnc, provider_apns = index.lookup_imsi(imsi, mnc_length)
        candidates = rank_apns(
            override=config.override,
            last_worked=memory.last_worked(iccid),
            provider_apns=provider_apns,
            spn=spn,
            allow_network_apn=config.allow_network_apn,
        )
        return cls(iccid, candidates, memory)

    @property
    def current(self) -> ApnCandidate | None:
        """The candidate being tried, or None before :meth:`start` and after exhaustion."""
        if 0 <= self._index < len(self.candidates):
            return self.candidates[self._index]
        return None

    def start(self) -> ApnSelected | ApnsExhausted:
        """Select the first candidate. Raises RuntimeError if already started."""
        if self._index != -1:
            raise RuntimeError("ApnChooser.start() called twice; use restart() after exhaustion")
        return self._advance()

    def restart(self) -> ApnSelected | ApnsExhausted:
        """Start again from the first candidate (after :class:`ApnsExhausted` and a backoff)."""
        self._index = -1
        self._tried.clear()
        return self._advance()

    def failed(self, reason: ApnFailure) -> ApnSelected | ApnsExhausted:
        """The current candidate failed; select the next.

        Raises RuntimeError when no candidate is being tried (not started, or exhausted).
        """
        current = self.current
        if current is None:
            raise RuntimeError("ApnChooser.failed() with no APN being tried; call start() first")
        self._tried.append((current, reason))
        return self._advance()

    def worked(self) -> ApnWorked:
        """The current candidate gave a data link: remember it for this ICCID.

        Raises RuntimeError when no candidate is being tried.
        """
        current = self.current
        if current is None:
            raise RuntimeError("ApnChooser.worked() with no APN being tried; call start() first")
        changed = self._memory.remember(self.iccid, current.settings)
        return ApnWorked(self.iccid, current, changed)

    def _advance(self) -> ApnSelected | ApnsExhausted:
        self._index += 1
        if self._index >= len(self.candidates):
            self._index = len(self.candidates)
            return ApnsExhausted(self.iccid, tuple(self._tried))
        return ApnSelected(self.candidates[self._index], self._index + 1, len(self.candidates))
