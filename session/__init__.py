"""The session layer both ends share: the paths of one session (a TURN relay at once, a direct
path when ICE finds one, port prediction and the birthday search), the loop that drives a session
core over them, and the streams' pump and allow-list. ``daemon`` and ``viewer`` import it; it
imports ``protocol`` and the neutral ``store`` and ``compat``."""
