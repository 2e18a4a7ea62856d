"""The stream core: one blob stream from its reply to its verified end.

- ``state``: how much to read next, what the end means, verification (no I/O).
- ``ends``: a stream's descriptors and its end (FinishPipe or the error pipe, telling a
  killed skopeo from a short blob, resuming an interrupted transfer) as a generator of
  actions, written once for both readers.
- ``copying``: ``copy_to``'s helpers: the hash and write threads, and read coalescing.
- ``hashing``: the sync reader's plain reads, hashed on a helper thread behind the caller.
"""
