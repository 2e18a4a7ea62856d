"""The synchronous, thread-safe front end: :class:`ImageProxy` and :class:`BlobReader`.

Requests from any thread are queued and sent at once (:class:`~._connection.Connection`
keeps their order); whichever waiting thread finds nobody receiving becomes the receiver
and hands each reply to its ticket, so threads never wait on each other's requests more
than the proxy itself makes them. Blob streams are read from their pipes without any lock.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any, Generator, List, Optional, Tuple, Union

from . import _catalog as catalog
from . import _operations as ops
from . import _streaming as streaming
from ._blobstream import StreamSpec
from ._config import ProxyConfig
from ._connection import Connection, Ticket
from ._errors import (
    ProtocolError,
    ProxyClosedError,
    ProxyError,
    ProxyExitedError,
    ProxyStalledError,
    RequestError,
    unless_already_failing,
)
from ._models import Descriptor, Digest, ImageConfig, ImageIndex, ImageManifest, LayerInfo
from ._operations import OpenedImage
from ._process import SkopeoProcess
from ._protocol import Arg, MetadataBuffer, PipeReply, Reply, ValueReply, encode_request
from ._reference import ImageReference
from ._sync_reader import BlobReader, wait_readable
from ._transport import READ_CHUNK, close_fds, new_receive_buffer, peer_closed, receive_reply


class ImageProxy(ops.FrontEnd):
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
        self._conn = Connection(self._config.max_metadata_size)
        self._cond = threading.Condition()
        self._receiving = False
        self._buf = new_receive_buffer()
        self._closed = False
        self._process = SkopeoProcess(self._config)
        # skopeo is killed and reaped if the proxy is dropped without close()
        self._finalizer = weakref.finalize(self, self._process.terminate_and_release)
        try:
            self._run(ops.initialize(self._session))
        except BaseException:
            self._teardown(None)
            self._finalizer()
            raise

    # --- context manager and lifetime -------------------------------------------------

    def __enter__(self) -> ImageProxy:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        with unless_already_failing(exc_type):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"protocol {self._session.protocol_version}"
        return f"<ImageProxy pid={self._process.pid} {state}>"

    def close(self) -> None:
        """Close the images still open, send Shutdown, reap skopeo, and raise
        ProxyExitedError if it exited non-zero."""
        failure = self._close_open_images()
        with self._cond:
            if self._closed and self._finalizer.alive is False:
                return
            already_failed = self._conn.failure is not None
            self._closed = True
            if not already_failed:
                try:
                    # Shutdown has no reply, hence no ticket
                    self._process.sock.sendmsg([encode_request("Shutdown", ())])
                except OSError:
                    pass
                self._conn.fail(ProxyClosedError("the proxy was closed"))
            self._cond.notify_all()
        code = self._process.wait(10.0)
        if code is None:
            self._process.kill()
            code = self._process.proc.returncode
        stderr = self._process.stderr_tail()
        self._finalizer.detach()
        self._process.release()
        if code != 0 and not already_failed:
            raise ProxyExitedError(code, stderr, "shutdown")
        if failure is not None:
            raise failure

    def _close_open_images(self) -> Optional[ProxyError]:
        """Close the images still open; the error that ended the connection meanwhile."""
        # skopeo 1.9.3 leaves an oci-archive's extracted copy in /var/tmp for an image
        # still open at Shutdown; a proxy that failed is past asking.
        if not self._closed and self._conn.failure is None and self._session.open_images:
            try:
                self._run(ops.close_open_images(self._session))
            except ProxyError as e:
                return e  # skopeo died: close() reports it as Shutdown would have
        return None

    def _teardown(self, failure: Optional[ProxyError]) -> None:
        """Kill skopeo after a failure; outstanding and later requests fail with ``failure``.

        Our socket stays open until close() or garbage collection: another thread may be
        blocked in a receive on it, and closing an fd under it is never safe.
        """
        with self._cond:
            self._conn.fail(failure or ProxyClosedError("the proxy was torn down"))
            self._closed = True
            self._cond.notify_all()
        self._process.kill()

    # --- requests and replies ---------------------------------------------------------

    def _submit(
        self, method: str, args: Tuple[Arg, ...], *, exempt: bool = False, abandoned: bool = False
    ) -> Ticket:
        with self._cond:
            if self._closed and self._conn.failure is None:
                raise ProxyClosedError("the proxy is closed")
            data, ticket = self._conn.request(method, args, exempt=exempt)
            ticket.abandoned = abandoned
            try:
                self._process.sock.sendmsg([data])
            except OSError:
                pass  # skopeo is gone: the receiver sees EOF and says so, with its status
        return ticket

    def _wait(self, ticket: Ticket) -> Reply:
        cond = self._cond
        with cond:
            while not ticket.done:
                if self._receiving:
                    cond.wait()
                    continue
                self._receiving = True
                exempt = self._conn.head_exempt
                head = self._conn.pending[0].method if self._conn.pending else ticket.method
                cond.release()
                try:
                    outcome = self._receive_one(exempt, head)
                finally:
                    cond.acquire()
                    self._receiving = False
                    cond.notify_all()
                self._deliver(outcome)
        return ticket.result()

    def _receive_one(self, exempt: bool, context: str) -> Any:
        """One message from the socket, or the error that ends the connection."""
        sock = self._process.sock
        timeout = None if exempt else self._config.stall_timeout
        if timeout is not None and not wait_readable(sock.fileno(), timeout):
            return ProxyStalledError(timeout, f"{context} request", self._process.stderr_tail())
        try:
            data, fds, truncated = receive_reply(sock, self._buf)
        except OSError:
            data, fds, truncated = b"", [], False
        if not data and not fds:
            if peer_closed(sock):
                return self._process.exited_error(context)
            return ProtocolError(f"{context}: empty reply")
        return data, fds, truncated

    def _deliver(self, outcome: Any) -> None:
        """Resolve a ticket (the caller holds the lock)."""
        if isinstance(outcome, ProxyError):
            self._conn.fail(outcome)
            self._closed = True
            self._process.kill()
            return
        try:
            _, follow_ups = self._conn.receive(*outcome)
        except ProtocolError:
            self._closed = True
            self._process.kill()
            return
        for method, args in follow_ups:
            data, extra = self._conn.request(method, args)
            extra.abandoned = True
            try:
                self._process.sock.sendmsg([data])
            except OSError:
                pass

    def _call(self, method: str, args: Tuple[Arg, ...], exempt: bool = False) -> Reply:
        return self._wait(self._submit(method, args, exempt=exempt))

    # --- performing actions -----------------------------------------------------------

    def _run(self, op: Generator[Any, Any, Any]) -> Any:
        return ops.drive(op, self._perform)

    def _perform(self, action: Any) -> Any:
        if isinstance(action, ops.Call):
            reply = self._call(action.method, action.args)
            assert isinstance(reply, ValueReply)
            return reply.value
        if isinstance(action, ops.CallPiped):
            return self._call_piped(action.method, action.args)
        if isinstance(action, ops.OpenStream):
            return self._open_stream(action.method, action.args, action.spec)
        if isinstance(action, (ops.Sleep)):
            time.sleep(action.seconds)
            return None
        return self._perform_stream_action(action)

    def _perform_stream_action(self, action: Any) -> Any:
        if isinstance(action, streaming.Submit):
            return self._submit(
                action.method, action.args, exempt=action.exempt, abandoned=action.abandoned
            )
        if isinstance(action, streaming.Wait):
            return self._wait(action.ticket)
        if isinstance(action, streaming.ReadAll):
            return self._read_all(action.fd, action.context)
        if isinstance(action, streaming.ProxyGone):
            if self._process.wait(action.timeout) is not None:
                err = self._process.exited_error(action.context, 0)
                self._teardown(err)
                raise err
            return None
        if isinstance(action, streaming.Reopen):
            return self._call(action.method, action.args)
        if isinstance(action, streaming.Discard):
            return self._discard(action.fd, action.count, action.hasher)
        raise TypeError(f"unknown action {action!r}")

    def _stalled(self, context: str) -> ProxyStalledError:
        assert self._config.stall_timeout is not None
        err = ProxyStalledError(self._config.stall_timeout, context, self._process.stderr_tail())
        self._teardown(err)
        return err

    def _read_all(self, fd: int, context: str) -> bytes:
        payload = MetadataBuffer(context, self._config.max_metadata_size)
        while True:
            if not wait_readable(fd, self._config.stall_timeout):
                raise self._stalled(context)
            chunk = os.read(fd, payload.room(READ_CHUNK))
            if not chunk:
                return payload.take()
            payload.add(chunk)

    def _discard(self, fd: int, count: int, hasher: Any) -> int:
        buf = memoryview(bytearray(min(count, READ_CHUNK)))
        done = 0
        while done < count:
            if not wait_readable(fd, self._config.stall_timeout):
                raise self._stalled("resuming a blob")
            got = os.readv(fd, [buf[: min(len(buf), count - done)]])
            if not got:
                break
            hasher.update(buf[:got])
            done += got
        return done

    def _call_piped(self, method: str, args: Tuple[Arg, ...]) -> Tuple[Any, bytes]:
        reply = self._call(method, args)
        assert isinstance(reply, PipeReply)
        try:
            # FinishPipe answers only once the pipe is drained, and the pipe reaches EOF only
            # inside FinishPipe: send it first, then drain, then take its reply.
            finish = self._submit("FinishPipe", (reply.pipe_id,), exempt=True)
            try:
                payload = self._read_all(reply.fd, f"{method} payload")
            except BaseException:
                finish.abandoned = True
                raise
            try:
                self._wait(finish)
            except RequestError as e:
                raise RequestError(method, e.message, e.error_code, e.retryable) from None
            return reply.value, payload
        finally:
            close_fds(reply.fd)

    def _open_stream(self, method: str, args: Tuple[Arg, ...], spec: StreamSpec) -> BlobReader:
        reply = self._call(method, args)
        try:
            ends = streaming.StreamEnds(reply, spec, method, args)
        except ProtocolError as e:
            self._teardown(e)
            raise
        early = ends.stream.early_error
        if early is not None:
            self._run(streaming.abandon_stream(ends))
            raise early
        return BlobReader(self, ends)

    # --- public methods ---------------------------------------------------------------

    def open_image(self, reference: Union[str, ImageReference]) -> OpenedImage:
        """Open an image, for example ``"docker://registry.example/app:1.0"``.

        Raises :class:`ImageNotFoundError` if it does not exist (what each transport can
        tell: docs/transports.md), :class:`RequestError` if it could not be looked at.
        """
        ref = ops.as_reference(reference)
        return OpenedImage(self, self._run(ops.open_image(self._session, ref)), ref)

    def open_image_optional(self, reference: Union[str, ImageReference]) -> Optional[OpenedImage]:
        """Open an image, or return None exactly where :meth:`open_image` raises
        :class:`ImageNotFoundError`; other failures raise :class:`RequestError`."""
        ref = ops.as_reference(reference)
        image_id = self._run(ops.open_image_optional(self._session, ref))
        return None if image_id is None else OpenedImage(self, image_id, ref)

    def list_tags(self, repository: Union[str, ImageReference]) -> List[str]:
        """The tags of ``repository``: ``docker://registry/repo`` (no tag), a
        ``docker-archive:`` file (its references, such as ``docker.io/library/x:1``) or an
        ``oci:`` layout directory (the names in its index.json), in the order listed.

        Runs ``skopeo list-tags`` with this proxy's configuration (credentials,
        certificates, TLS, registries.conf); layouts are read directly. Raises
        :class:`ImageNotFoundError` for a repository, archive or layout that is not there,
        :class:`RequestError` for other failures, :class:`ConfigurationError` for other
        transports or a reference with a tag.
        """
        return catalog.list_tags(self._config, repository)

    def fetch_index(
        self, reference: Union[str, ImageReference]
    ) -> Optional[Tuple[Digest, ImageIndex]]:
        """The manifest list or OCI index of ``reference`` as stored, with its own digest
        (sha256 of its bytes); None for an image with a single manifest.

        Each instance opens by digest: ``docker://registry/repo@sha256:...`` (for layouts see
        docs/transports.md). Runs ``skopeo inspect --raw`` with this proxy's configuration;
        the answer is bounded to 4 MiB. Raises :class:`ImageNotFoundError` for a missing
        image, :class:`RequestError` for other failures, :class:`ProtocolError` for an
        answer that is not a valid index.
        """
        return catalog.fetch_index(self._config, reference)

    def close_image(self, img: OpenedImage) -> None:
        """Release an opened image in the proxy. Closing twice is harmless."""
        if img.closed and img._owner is self:
            return
        image_id = self._session.check_image(self, img)
        img._closed = True
        if self._closed:
            return
        self._run(ops.close_image(self._session, image_id))

    def fetch_manifest_raw_oci(self, img: OpenedImage) -> Tuple[Digest, bytes]:
        """The image's manifest in OCI form, and the digest of the manifest as stored."""
        op = ops.fetch_manifest_raw(self._session.check_image(self, img))
        return self._run(op)  # type: ignore[no-any-return]

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
