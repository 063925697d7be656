"""Stand-ins for the NAT lifetime probing that ``PresenceTuning`` drives: a prober that records
the calls it gets, and its learner, whose state and learned interval a test sets."""

from __future__ import annotations

from dvrlink.daemon.nat_lifetime import LearnerState


class FakeLearner:
    """What ``PresenceTuning`` reads of a ``LifetimeLearner``: its state and learned interval."""

    def __init__(self, interval: float = 25.0, state: LearnerState = LearnerState.IDLE) -> None:
        self.interval = interval
        self.state = state


class FakeProber:
    """What ``PresenceTuning`` calls on a ``NatProber``: start, stop, path changes, and its
    learner. ``calls`` records start, stop and path changes in order; the learner's controls
    (a keepalive answered, the session lost) are not recorded."""

    def __init__(self, learner: FakeLearner | None = None) -> None:
        self.learner = learner if learner is not None else FakeLearner()
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")
        self.learner.state = LearnerState.MEASURING

    def stop(self) -> None:
        self.calls.append("stop")

    def path_changed(self, reason: str) -> None:
        self.calls.append("path-changed")

    def broker_answered(self) -> None:
        """The learner's control (a keepalive answered): no start or stop, not recorded."""

    def session_lost(self) -> None:
        """The learner's control (the session ended): no start or stop, not recorded."""
