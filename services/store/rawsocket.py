"""The store's hot-path socket calls: one place that reaches into pyzmq's backend.

Every request and event the store handles goes through a few socket calls.
pyzmq's convenience layer (flag enums, ``send_multipart``) costs ~35 µs a
message; its backend's ``send``/``recv``/``get`` called directly cost ~3.
They are unbound methods here, looked up once: callers bind them to a
module-level name (``from astralboot.services.store.rawsocket import send as _send``) and call
``_send(sock, frame, flags)``, so no Python frame sits between a message
and libzmq. No other store module imports ``zmq.backend``.
"""

from __future__ import annotations

import zmq
from zmq.backend import Socket as _BackendSocket

send = _BackendSocket.send  # send(sock, frame, flags)
recv = _BackendSocket.recv  # recv(sock, flags[, copy])
get = _BackendSocket.get  # get(sock, option)

# Flags and options as plain ints: an enum member costs a conversion per call.
NOBLOCK = int(zmq.NOBLOCK)
MORE = int(zmq.SNDMORE) | NOBLOCK  # a frame with more to follow, never blocking
RCVMORE = int(zmq.RCVMORE)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
