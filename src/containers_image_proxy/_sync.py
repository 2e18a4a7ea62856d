"""The synchronous, thread-safe front end: :class:`ImageProxy` and :class:`BlobReader`.

One lock serialises request/reply exchanges on the socket (the proxy answers one request
at a time anyway). Blob streams are read without the lock, so many threads can stream
blobs over one proxy at once; only their closing FinishPipe takes it, and by then the pipe
is drained, so the proxy answers at once.
"""

from __future__ import annotations

import io
import os
import select
import threading
import time
import weakref
from typing import Any, List, Optional, Tuple, TypeVar, Union

from . import _operations as ops
from ._blobstream import StreamEnds, StreamKind, StreamSpec
from ._config import ProxyConfig
from ._errors import (
    ProtocolError,
    ProxyClosedError,
    ProxyError,
    ProxyExitedError,
    ProxyStalledError,
    RequestError,
)
from ._models import Descriptor, Digest, ImageConfig, ImageManifest, LayerInfo
from ._operations import OpenedImage
from ._process import SkopeoProcess
from ._protocol import (
    Feature,
    PipeReply,
    Reply,
    ValueReply,
    decode_raw_blob_error,
    decode_reply,
    encode_request,
)
from ._reference import ImageReference
from ._transport import READ_CHUNK, close_fds, new_receive_buffer, peer_closed, receive_reply

T = TypeVar("T")


def _wait_readable(fd: int, timeout: Optional[float]) -> bool:
    if timeout is None:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(timeout * 1000))


class ImageProxy:
    """A skopeo image proxy, driven synchronously; safe to share between threads.

    Example::

        with ImageProxy() as proxy:
            with proxy.open_image("docker://quay.io/libpod/busybox:latest") as img:
                digest, manifest = proxy.fetch_manifest(img)
                for layer in manifest.layers:
                    with proxy.get_descriptor(img, layer) as blob:
                        data = blob.read()
    """

    def __init__(self, config: Optional[ProxyConfig] = None) -> None:
        self._config = config if config is not None else ProxyConfig()
        self._session = ops.Session(self._config)
        self._lock = threading.Lock()
        self._buf = new_receive_buffer()
        self._failure: Optional[ProxyError] = None
        self._closed = False
        self._process = SkopeoProcess(self._config)
        # skopeo is killed and reaped if the proxy is dropped without close()
        self._finalizer = weakref.finalize(self, self._process.terminate_and_release)
        try:
            self._run(ops.initialize(self._session))
        except BaseException:
            self._teardown()
            raise

    # --- context manager and lifetime -------------------------------------------------

    def __enter__(self) -> ImageProxy:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            # already failing: do not mask that error with one from the shutdown
            try:
                self.close()
            except ProxyError:
                pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"protocol {self._session.protocol_version}"
        return f"<ImageProxy pid={self._process.pid} {state}>"

    @property
    def config(self) -> ProxyConfig:
        """The configuration this proxy was started with."""
        return self._config

    @property
    def protocol_version(self) -> str:
        """The protocol version skopeo reported, for example ``"0.2.8"``."""
        return self._session.protocol_version

    def supports(self, feature: Union[Feature, str]) -> bool:
        """Whether this skopeo offers ``feature`` natively (see :class:`Feature`)."""
        return self._session.supports(feature)

    def close(self) -> None:
        """Send Shutdown, reap skopeo, and raise ProxyExitedError if it exited non-zero."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._failure is None:
                try:
                    self._process.sock.sendmsg([encode_request("Shutdown", ())])
                except OSError:
                    pass
            code = self._process.wait(10.0)
            if code is None:
                self._process.kill()
                code = self._process.proc.returncode
            stderr = self._process.stderr_tail()
            self._finalizer.detach()
            self._process.release()
        if code != 0 and self._failure is None:
            raise ProxyExitedError(code, stderr, "shutdown")

    def _teardown(self, failure: Optional[ProxyError] = None) -> None:
        """Kill skopeo after a failure; later calls raise ``failure``."""
        if failure is not None and self._failure is None:
            self._failure = failure
        self._closed = True
        self._finalizer()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise ProxyClosedError("the proxy is closed")

    # --- performing actions -----------------------------------------------------------

    def _run(self, op: ops.Op) -> Any:
        return ops.drive(op, self._perform)

    def _perform(self, action: ops.Action) -> Any:
        if isinstance(action, ops.Call):
            reply = self._exchange(action.method, action.args)
            assert isinstance(reply, ValueReply)
            return reply.value
        if isinstance(action, ops.CallPiped):
            return self._call_piped(action.method, action.args)
        if isinstance(action, ops.Sleep):
            time.sleep(action.seconds)
            return None
        return self._open_stream(action.method, action.args, action.spec)

    def _exchange(self, method: str, args: Tuple[Any, ...]) -> Reply:
        request = encode_request(method, args)
        with self._lock:
            self._check_usable()
            try:
                self._process.sock.sendmsg([request])
            except OSError:
                pass  # skopeo is gone: receiving says so, with its exit status
            return self._receive(method, method)

    def _receive(self, method: str, context: str) -> Reply:
        """Receive and decode the next reply; the caller holds the lock."""
        sock = self._process.sock
        if not _wait_readable(sock.fileno(), self._config.stall_timeout):
            raise self._stalled(f"{context} request")
        try:
            data, fds, truncated = receive_reply(sock, self._buf)
        except OSError:
            data, fds, truncated = b"", [], False
        if not data and not fds:
            err: ProxyError
            if peer_closed(sock):
                err = self._process.exited_error(context)
            else:
                err = ProtocolError(f"{method}: empty reply")
            self._teardown(err)
            raise err
        try:
            return decode_reply(method, data, fds, truncated)
        except ProtocolError as e:
            self._teardown(e)
            raise

    def _stalled(self, context: str) -> ProxyStalledError:
        assert self._config.stall_timeout is not None
        err = ProxyStalledError(self._config.stall_timeout, context, self._process.stderr_tail())
        self._teardown(err)
        return err

    def _read_chunk(self, fd: int, size: int, context: str) -> bytes:
        if not _wait_readable(fd, self._config.stall_timeout):
            raise self._stalled(context)
        return os.read(fd, size)

    def _call_piped(self, method: str, args: Tuple[Any, ...]) -> Tuple[Any, bytes]:
        reply = self._exchange(method, args)
        assert isinstance(reply, PipeReply)
        try:
            # FinishPipe answers only once the pipe is drained, and the pipe reaches EOF only
            # inside FinishPipe: so drain it between sending FinishPipe and reading the reply.
            chunks: List[bytes] = []
            request = encode_request("FinishPipe", (reply.pipe_id,))
            with self._lock:
                self._check_usable()
                try:
                    self._process.sock.sendmsg([request])
                except OSError:
                    pass  # reported by _receive
                while True:
                    chunk = self._read_chunk(reply.fd, READ_CHUNK, f"{method} payload")
                    if not chunk:
                        break
                    chunks.append(chunk)
                try:
                    self._receive("FinishPipe", f"FinishPipe of {method}")
                except RequestError as e:
                    raise RequestError(method, e.message, e.error_code, e.retryable) from None
            return reply.value, b"".join(chunks)
        finally:
            close_fds(reply.fd)

    def _open_stream(self, method: str, args: Tuple[Any, ...], spec: StreamSpec) -> BlobReader:
        reply = self._exchange(method, args)
        try:
            reader = BlobReader(self, reply, spec)
        except ProtocolError as e:
            self._teardown(e)
            raise
        early = reader._stream.early_error
        if early is not None:
            reader.close_quietly()
            raise early
        return reader

    # --- public methods ---------------------------------------------------------------

    def open_image(self, reference: Union[str, ImageReference]) -> OpenedImage:
        """Open an image, for example ``"docker://registry.example/app:1.0"``."""
        ref = ops.as_reference(reference)
        return OpenedImage(self, self._run(ops.open_image(self._session, ref)), ref)

    def open_image_optional(self, reference: Union[str, ImageReference]) -> Optional[OpenedImage]:
        """Open an image, or return None if it does not exist (emulated before 0.2.4)."""
        ref = ops.as_reference(reference)
        image_id = self._run(ops.open_image_optional(self._session, ref))
        return None if image_id is None else OpenedImage(self, image_id, ref)

    def close_image(self, img: OpenedImage) -> None:
        """Release an opened image in the proxy. Closing twice is harmless."""
        if img.closed and img._owner is self:
            return
        image_id = self._session.check_image(self, img)
        img._closed = True
        if self._closed:
            return
        self._run(ops.close_image(image_id))

    def fetch_manifest_raw_oci(self, img: OpenedImage) -> Tuple[Digest, bytes]:
        """The image's manifest in OCI form, and the digest of the manifest as stored."""
        return self._run(ops.fetch_manifest_raw(self._session.check_image(self, img)))  # type: ignore[no-any-return]

    def fetch_manifest(self, img: OpenedImage) -> Tuple[Digest, ImageManifest]:
        """The image's manifest, parsed, and the digest of the manifest as stored."""
        return self._run(ops.fetch_manifest(self._session.check_image(self, img)))  # type: ignore[no-any-return]

    def fetch_config_raw(self, img: OpenedImage) -> bytes:
        """The image's OCI config as bytes (converted from Docker's form if needed)."""
        return self._run(ops.fetch_config_raw(self._session.check_image(self, img)))  # type: ignore[no-any-return]

    def fetch_config(self, img: OpenedImage) -> ImageConfig:
        """The image's OCI config, parsed."""
        return self._run(ops.fetch_config(self._session.check_image(self, img)))  # type: ignore[no-any-return]

    def get_layer_info(self, img: OpenedImage) -> List[LayerInfo]:
        """The layers as a copy would fetch them (digest, size, media type)."""
        image_id = self._session.check_image(self, img)
        return self._run(ops.get_layer_info(self._session, image_id, img.reference))  # type: ignore[no-any-return]

    def get_blob(self, img: OpenedImage, digest: Union[str, Digest], size: int) -> BlobReader:
        """A verified stream of one blob: size and digest are checked by the time it ends."""
        image_id = self._session.check_image(self, img)
        return self._run(ops.get_blob(self._session, image_id, digest, size))  # type: ignore[no-any-return]

    def get_descriptor(
        self, img: OpenedImage, descriptor: Union[Descriptor, LayerInfo]
    ) -> BlobReader:
        """:meth:`get_blob` for a descriptor or layer info."""
        return self.get_blob(img, descriptor.digest, descriptor.size)

    def get_raw_blob(
        self,
        img: OpenedImage,
        digest: Union[str, Digest],
        size: Optional[int] = None,
        *,
        verify: bool = False,
    ) -> BlobReader:
        """GetRawBlob (protocol 0.2.8): no verification in skopeo; here only if ``verify``."""
        image_id = self._session.check_image(self, img)
        return self._run(ops.get_raw_blob(self._session, image_id, digest, size, verify))  # type: ignore[no-any-return]


class BlobReader(io.BufferedIOBase):
    """A blob streamed from the proxy: a binary file object.

    Reading to the end checks size and digest and raises
    :class:`~containers_image_proxy.BlobVerificationError` on a mismatch; ``close()``
    before the end is allowed and cheap. Works with ``shutil.copyfileobj`` and
    ``tarfile.open(fileobj=reader, mode="r|*")``.
    """

    def __init__(self, proxy: ImageProxy, reply: Reply, spec: StreamSpec) -> None:
        super().__init__()
        self._proxy = proxy
        self._ends = StreamEnds(reply, spec)
        self._stream = self._ends.stream
        self._ended = False  # the data part is complete (or failed)

    @property
    def digest(self) -> Digest:
        """The digest asked for."""
        return self._stream.spec.digest

    @property
    def size(self) -> Optional[int]:
        """The blob's size, when known."""
        return self._stream.size

    @property
    def bytes_read(self) -> int:
        """How many bytes were handed out so far."""
        return self._stream.received

    def readable(self) -> bool:
        return True

    def readinto1(self, b: Any) -> int:
        """Read once from the pipe into ``b``; 0 at the end (after verification)."""
        view = memoryview(b).cast("B")
        if self.closed:
            raise ValueError("read from a closed BlobReader")
        if self._ended:
            self._stream.check()
            return 0
        n = self._stream.want(len(view))
        if n == 0:
            self._end()
            return 0
        chunk = view[:n]
        fd = self._ends.data_fd
        if not _wait_readable(fd, self._proxy._config.stall_timeout):
            raise self._proxy._stalled(f"{self._stream.spec.kind.value} of {self.digest}")
        got = os.readv(fd, [chunk])
        if got == 0:
            self._end()
            return 0
        self._stream.feed(chunk[:got])
        if self._stream.overflowed:
            self._end()
        return got

    def readinto(self, b: Any) -> int:
        """Fill ``b`` unless the blob ends first (file semantics: pipes return short reads)."""
        view = memoryview(b).cast("B")
        filled = 0
        while filled < len(view):
            got = self.readinto1(view[filled:])
            if got == 0:
                break
            filled += got
        return filled

    def read(self, size: Optional[int] = -1) -> bytes:
        """Read ``size`` bytes (fewer only at the end), or everything left when negative."""
        if size is None or size < 0:
            parts: List[bytes] = []
            while True:
                part = self.read1(READ_CHUNK)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        buf = bytearray(size)
        n = self.readinto(buf)
        del buf[n:]
        return bytes(buf)

    def read1(self, size: int = -1) -> bytes:
        """Read at most ``size`` bytes with a single read of the pipe."""
        buf = bytearray(READ_CHUNK if size < 0 else size)
        n = self.readinto1(buf)
        del buf[n:]
        return bytes(buf)

    def _end(self) -> None:
        """The data part is over: collect the closing information, then verify."""
        if self._ended:
            return
        self._ended = True
        try:
            if self._stream.spec.kind is StreamKind.PIPE:
                self._finish_pipe(early=False)
            elif not self._stream.overflowed:
                self._finish_raw()
        finally:
            self._ends.close()
        self._stream.check()

    def _finish_pipe(self, early: bool) -> None:
        try:
            self._proxy._run(ops.finish_pipe(self._ends.pipe_id))
        except RequestError as e:
            if not (early and self._stream.is_broken_pipe(e)):
                self._stream.finish_pipe_result(e)

    def _finish_raw(self) -> None:
        # the data pipe is at EOF, so the error pipe is complete once it reaches EOF too
        chunks = []
        while True:
            if not _wait_readable(self._ends.error_fd, self._proxy._config.stall_timeout):
                raise self._proxy._stalled(f"GetRawBlob of {self.digest}")
            chunk = os.read(self._ends.error_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        error = decode_raw_blob_error(b"".join(chunks))
        if self._ends.missing_bytes_without_error(error):
            process = self._proxy._process
            if process.wait(0.5) is not None:
                err = process.exited_error(f"GetRawBlob of {self.digest}", 0)
                self._proxy._teardown(err)
                raise err
        self._stream.raw_result(error)

    def close(self) -> None:
        """Close the stream. If every byte was read, this verifies and may raise."""
        if self.closed:
            return
        try:
            if not self._ended and self._stream.complete:
                self._end()
        finally:
            self.close_quietly()

    def close_quietly(self) -> None:
        """Abandon the stream: close our ends; the proxy sees EPIPE and stays usable."""
        if self.closed:
            return
        self._ends.close()
        if not self._ended:
            self._ended = True
            if self._stream.spec.kind is StreamKind.PIPE and self._proxy._failure is None:
                try:
                    self._finish_pipe(early=True)
                except ProxyError:
                    pass
        super().close()

    def __del__(self) -> None:
        # no FinishPipe from a finalizer: only make sure the descriptors do not leak
        ends = getattr(self, "_ends", None)
        if ends is not None:
            ends.close()
