"""Several broker nodes on one Redis: where each device's presence session lives (``directory``),
invites routed to the node that holds the device (``routing``), session records any node can
continue (``sessions``), login failures counted fleet-wide (``counters``), and the node's name,
key names and fleet key (``node``). ``runtime`` wires them to one Redis client and one loop.

Nothing here runs unless the broker's ``redis_url`` is set: a single node stays as it was.
"""
