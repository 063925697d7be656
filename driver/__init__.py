"""The loop code for sans-I/O cores: :class:`~dvrlink.driver.core_driver.CoreDriver` feeds a
core its datagrams and timer expiries and flushes its events and datagrams;
:class:`~dvrlink.driver.at_link.AtLink` runs the AT engine on a serial port.

Both ends use them (the daemon's presence links and modem, the broker's presence and TURN links
and its SMS gateway's modem), so they live below both. They import only ``protocol`` (the cores
they run, which do no I/O) and ``compat``: every other package may import this one.
"""
