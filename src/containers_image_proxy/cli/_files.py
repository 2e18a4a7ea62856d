"""The command line tool's file writing is the library's (``containers_image_proxy._files``)."""

from .._files import (
    AtomicFile,
    copy_stream,
    create_new,
    destination_directory,
    file_digest,
    fsync_dir,
    write_atomically,
)

__all__ = [
    "AtomicFile",
    "copy_stream",
    "create_new",
    "destination_directory",
    "file_digest",
    "fsync_dir",
    "write_atomically",
]
