"""The store: the one process that owns state (leases, machines, events, content).

``astralboot store -c config.toml`` runs :func:`server.run`. The modules, each
one idea:

- ``server``: the entry point (open the database, build, serve until a
  signal); ``router``: the request socket, routing and health, deciding
  nothing; ``commits``: the group commit; ``retries``: retried requests
  answered once; ``dispatcher``: content requests in worker threads;
  ``eventhub``: the events socket; ``rawsocket``: the hot-path socket calls.
- ``service``: every lease, machine, reservation and event request, sans-IO
  (a request and the time in, a reply and the writes it needs out).
- ``leases``: pools and allocation rules, in memory; ``machines``: names,
  OS, class, labels.
- ``journal``: the writes a decision produces, grouped into batches.
- ``database``: engine set-up (SQLite WAL / PostgreSQL), migrations,
  loading, one transaction per batch; ``models``: the tables;
  ``migrations/``: alembic; ``worker``: the database thread.
- ``content``: paths to verified files in the digest cache;
  ``sources``: the data folder and IPFS.
"""
