"""The option negotiation automaton of RFC 1661 (section 4), shared by LCP and IPCP.

:data:`TRANSITIONS` is the RFC's state transition table, kept as one table: (state, event) ->
(actions, next state). Pairs the RFC marks ``-`` (cannot happen, or ignored) are absent, and the
automaton ignores them. The RFC's option marks are not implemented: ``r`` (restart: Open in
Stopped/Closing/Stopping stays), ``x`` (crossed connection: handled like the plain transition),
``p`` (passive: a Configure-Request timeout ends in Stopped).
"""

from __future__ import annotations

from enum import Enum


class State(Enum):
    INITIAL = "Initial"
    STARTING = "Starting"
    CLOSED = "Closed"
    STOPPED = "Stopped"
    CLOSING = "Closing"
    STOPPING = "Stopping"
    REQ_SENT = "Req-Sent"
    ACK_RCVD = "Ack-Rcvd"
    ACK_SENT = "Ack-Sent"
    OPENED = "Opened"


class Event(Enum):
    UP = "Up"
    DOWN = "Down"
    OPEN = "Open"
    CLOSE = "Close"
    TO_PLUS = "TO+"
    TO_MINUS = "TO-"
    RCR_PLUS = "RCR+"
    RCR_MINUS = "RCR-"
    RCA = "RCA"
    RCN = "RCN"
    RTR = "RTR"
    RTA = "RTA"
    RUC = "RUC"
    RXJ_PLUS = "RXJ+"
    RXJ_MINUS = "RXJ-"
    RXR = "RXR"


class Action(Enum):
    TLU = "tlu"
    """This-Layer-Up."""
    TLD = "tld"
    """This-Layer-Down."""
    TLS = "tls"
    """This-Layer-Started."""
    TLF = "tlf"
    """This-Layer-Finished."""
    IRC = "irc"
    """Initialize-Restart-Count."""
    ZRC = "zrc"
    """Zero-Restart-Count (and start the timer: the peer gets one timeout to see our Terminate-Ack)."""
    SCR = "scr"
    SCA = "sca"
    SCN = "scn"
    STR = "str"
    STA = "sta"
    SCJ = "scj"
    SER = "ser"


# RFC 1661 section 4.1, "State Transition Table", one row per event, states 0-9 in column order.
_TABLE = """
Up    2         irc,scr/6 -         -             -       -       -         -         -         -
Down  -         -         0         tls/1         0       1       1         1         1         tld/1
Open  tls/1     1         irc,scr/6 3r            5r      5r      6         7         8         9r
Close 0         tlf/0     2         2             4       4       irc,str/4 irc,str/4 irc,str/4 tld,irc,str/4
TO+   -         -         -         -             str/4   str/5   scr/6     scr/6     scr/8     -
TO-   -         -         -         -             tlf/2   tlf/3   tlf/3p    tlf/3p    tlf/3p    -
RCR+  -         -         sta/2     irc,scr,sca/8 4       5       sca/8     sca,tlu/9 sca/8     tld,scr,sca/8
RCR-  -         -         sta/2     irc,scr,scn/6 4       5       scn/6     scn/7     scn/6     tld,scr,scn/6
RCA   -         -         sta/2     sta/3         4       5       irc/7     scr/6x    irc,tlu/9 tld,scr/6x
RCN   -         -         sta/2     sta/3         4       5       irc,scr/6 scr/6x    irc,scr/8 tld,scr/6x
RTR   -         -         sta/2     sta/3         sta/4   sta/5   sta/6     sta/6     sta/6     tld,zrc,sta/5
RTA   -         -         2         3             tlf/2   tlf/3   6         6         8         tld,scr/6
RUC   -         -         scj/2     scj/3         scj/4   scj/5   scj/6     scj/7     scj/8     scj/9
RXJ+  -         -         2         3             4       5       6         6         8         9
RXJ-  -         -         tlf/2     tlf/3         tlf/2   tlf/3   tlf/3     tlf/3     tlf/3     tld,irc,str/5
RXR   -         -         2         3             4       5       6         7         8         ser/9
"""


def _parse_table(text: str) -> dict[tuple[State, Event], tuple[tuple[Action, ...], State]]:
    states = list(State)
    events = {event.value: event for event in Event}
    table: dict[tuple[State, Event], tuple[tuple[Action, ...], State]] = {}
    for row in text.strip().splitlines():
        name, *cells = row.split()
        if len(cells) != len(states):
            raise ValueError(f"row {name!r} of the RFC 1661 table has {len(cells)} cells, not 10")
        for state, cell in zip(states, cells, strict=True):
            if cell == "-":
                continue
            actions, _, target = cell.rpartition("/")
            number = int(target.rstrip("rxp"))
            acts = tuple(Action(a) for a in actions.split(",")) if actions else ()
            table[(state, events[name])] = (acts, states[number])
    return table


TRANSITIONS = _parse_table(_TABLE)
"""(state, event) -> (actions in order, next state), as RFC 1661 section 4.1 gives them."""

TIMER_STATES = frozenset({State.CLOSING, State.STOPPING, State.REQ_SENT, State.ACK_RCVD, State.ACK_SENT})
"""States in which the restart timer runs (RFC 1661 4.6)."""
