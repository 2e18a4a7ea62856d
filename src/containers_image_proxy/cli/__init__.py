"""The ``containers-image-proxy`` command line tool (also ``python -m containers_image_proxy``).

A thin layer over the library, one module per concern:

- ``_options``: the command line and its mapping onto :class:`~containers_image_proxy.ProxyConfig`
- ``_commands``: inspect, manifest, config, layers, blob, cat, ls, unpack, exists
- ``_catalog``: tags, index
- ``_pull``: pull into an OCI image layout
- ``_progress``: progress bars (rich, optional) or nothing
- ``_files``: atomic writes
- ``_errors``: exit statuses and one-line error messages
- ``_main``: the entry point and signal handling

See docs/cli.md.
"""

from ._main import main

__all__ = ["main"]
