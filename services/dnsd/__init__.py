"""dnsd: DNS for the boot network, authoritative for its own names, a
forwarder for everything else.

The I/O-free core, one job per module:

- ``labels``: host names from DHCP made into valid, unique DNS labels.
- ``zone``: the authoritative data (hosts by MAC, the server's own names,
  the forward zone and one reverse zone per served subnet) and what it says
  about a name: records, NODATA or NXDOMAIN, each with its SOA.
- ``wire``: dnspython's wire format under our rules: a query checked and
  parsed (or a typed error naming the rcode to answer with), and a response
  rendered within the client's size, truncated with TC when it does not fit.
- ``ratelimit``: response-rate limiting (token buckets, BIND's RRL shape).
- ``policy``: a query's bytes in, an action out: a reply, a question for
  the forwarder, or a counted drop.
- ``cache``: the forwarder's answers, bounded, honouring TTLs (RFC 2308).
- ``forward``: the forwarder's questions to the upstream servers: ids,
  retries over the list, TCP after truncation, coalescing, SERVFAIL at the end.

None of them opens a socket, reads a clock or logs. Around them:

- ``server``: the sockets (UDP and TCP for clients, a fresh UDP socket per
  upstream question, TCP upstream when asked) and one timer; it passes
  ``now`` in and carries the bytes.
- ``feed``: the store's leases, machines and events drive
  :meth:`zone.Zone.set_host`/:meth:`zone.Zone.remove_host`.
- ``service``: the entry point (``astralboot dnsd``): the ``[dns]`` table
  to a zone, a server and a feed, inside the front-end frame
  (``common/frontend.py``: control socket, signals, dropping root).
"""
