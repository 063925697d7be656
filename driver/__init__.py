"""The one loop code for sans-I/O cores: :class:`~dvrlink.driver.core_driver.CoreDriver` feeds a
core its datagrams and timer expiries and flushes its events and datagrams.

Both ends use it (the daemon's presence links, the broker's presence and TURN links), so it
lives below both. It imports nothing of dvrlink: every package but ``protocol`` (which does no
I/O, and this package runs an asyncio timer) may import it.
"""
