"""The protocol core, without I/O.

- ``protocol``: the wire protocol: requests, reply validation (fd counts, pipe ids, error
  codes), the version and feature table, error classification.
- ``connection``: the ticket FIFO of one connection (pipelining, abandoned requests).
- ``actions``: the I/O actions operations yield and front ends perform (``Op[T]``).
- ``operations``: every client method once, as a generator of actions: version gates,
  fallbacks, emulation, retries.
- ``session``: what a front end knows without I/O: the session, opened images.
- ``notfound``: which skopeo errors mean "the image does not exist", per transport.
"""
