"""The transition tables of the modem manager and the AT engine: the diagrams in modem/README.md
are the ones generated from them; every state of the manager is reachable and can get back to a
closed port; and each profile's ICCID command is the one the emulator's model of that family
answers."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from dvrlink.modem.manager_states import TRANSITIONS, ModemState, state_diagram
from dvrlink.modem.profiles import PROFILES
from dvrlink.protocol.at_engine import TRANSITIONS as ENGINE_TRANSITIONS
from dvrlink.protocol.at_engine import state_diagram as engine_diagram
from hil.modememu.profiles import PROFILES as EMULATED

README = Path(__file__).resolve().parent.parent / "modem" / "README.md"


@pytest.mark.parametrize(
    ("module", "diagram", "table"),
    [
        ("modem.manager_states", state_diagram, TRANSITIONS),
        ("protocol.at_engine", engine_diagram, ENGINE_TRANSITIONS),
    ],
)
def test_the_readme_shows_the_diagram_of_each_table(
    module: str, diagram: Callable[[], str], table: Mapping[tuple[enum.Enum, enum.Enum], str]
) -> None:
    text = diagram()
    edges = text.splitlines()[2:]
    assert len(edges) == len(table), f"{len(edges)} edges drawn for {len(table)} transitions"
    pairs = zip(edges, table.values(), strict=True)
    assert all(cause in edge for edge, cause in pairs), "the edges are not in the table's order"
    assert text in README.read_text(), (
        f"modem/README.md does not hold the diagram of {module}.TRANSITIONS: regenerate it with "
        f"python -m dvrlink.{module}"
    )


def _reachable(start: ModemState, edges: set[tuple[ModemState, ModemState]]) -> set[ModemState]:
    seen = {start}
    todo = [start]
    while todo:
        state = todo.pop()
        for src, dst in edges:
            if src is state and dst not in seen:
                seen.add(dst)
                todo.append(dst)
    return seen


def test_every_state_is_reached_from_a_closed_port_and_leads_back_to_it() -> None:
    edges = set(TRANSITIONS)
    unreached = set(ModemState) - _reachable(ModemState.PORT_CLOSED, edges)
    assert not unreached, f"states no transition leads to: {sorted(s.value for s in unreached)}"
    reversed_edges = {(dst, src) for src, dst in edges}
    stuck = set(ModemState) - _reachable(ModemState.PORT_CLOSED, reversed_edges)
    assert not stuck, f"states with no way back to port-closed: {sorted(s.value for s in stuck)}"
    assert all(cause.strip() for cause in TRANSITIONS.values()), "every transition names its cause"


def test_each_profile_reads_the_iccid_with_the_command_its_family_answers() -> None:
    assert set(PROFILES) == set(EMULATED), f"profiles {sorted(PROFILES)} vs emulated {sorted(EMULATED)}"
    wrong = {
        name: (profile.iccid_command, EMULATED[name].iccid_command)
        for name, profile in PROFILES.items()
        if profile.iccid_command != EMULATED[name].iccid_command
    }
    assert not wrong, f"profile's ICCID command vs the emulated family's: {wrong}"
