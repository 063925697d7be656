"""Mermaid state diagrams generated from a state machine's one transition table, for the docs
(``modem/README.md`` holds those of the AT engine and the modem manager; a test checks they match
the code)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

State = TypeVar("State", bound=enum.Enum)


def mermaid_state_diagram(transitions: Mapping[tuple[State, State], str], initial: State) -> str:
    """``stateDiagram-v2`` text: the initial state, then one edge per transition, labelled with
    its cause, in the table's order. States are shown by their values."""
    lines = ["stateDiagram-v2", f"    [*] --> {initial.value}"]
    lines += [f"    {src.value} --> {dst.value}: {cause}" for (src, dst), cause in transitions.items()]
    return "\n".join(lines)
