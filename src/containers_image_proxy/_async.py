"""The asyncio front end: :class:`AsyncImageProxy` and :class:`AsyncBlobReader`.

Requests are pipelined: each is sent at once and its ticket queued
(:class:`~._connection.Connection`); a reader callback on the socket resolves the tickets
first in, first out. A task cancelled while waiting leaves its ticket in the queue, marked
abandoned, so the reply stream never shifts; when its reply comes, whatever it carries is
released (fds closed, FinishPipe or CloseImage sent for it) instead of being leaked.
"""

from __future__ import annotations

import asyncio
import collections
import os
import weakref
from typing import Any, Deque, Generator, List, Optional, Tuple, Union

from . import _catalog as catalog
from . import _operations as ops
from . import _streaming as streaming
from ._async_reader import AsyncBlobReader
from ._blobstream import StreamSpec
from ._config import ProxyConfig
from ._connection import Connection, Ticket, release
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
from ._protocol import MetadataBuffer, PipeReply, Reply, ValueReply, encode_request
from ._reference import ImageReference
from ._transport import READ_CHUNK, close_fds, new_receive_buffer, peer_closed, receive_reply


def _wake(ticket: Ticket) -> None:
    """Tell the task waiting on ``ticket`` (if any) that it is resolved."""
    fut = ticket.waiter
    if fut is not None and not fut.done():
        fut.set_result(None)


class AsyncImageProxy(ops.FrontEnd):
    """A skopeo image proxy for asyncio; many tasks may use one proxy at once.

    Example::

        async with AsyncImageProxy() as proxy:
            img = await proxy.open_image("oci:/srv/layout:latest")
            async with img:
                digest, manifest = await proxy.fetch_manifest(img)
                async with await proxy.get_descriptor(img, manifest.layers[0]) as blob:
                    async for chunk in blob:
                        ...
    """

    def __init__(self, config: Optional[ProxyConfig] = None) -> None:
        self._config = config if config is not None else ProxyConfig()
        self._session = ops.Session(self._config)
        self._process: Optional[SkopeoProcess] = None
        self._conn = Connection(self._config.max_metadata_size)
        self._outbox: Deque[bytes] = collections.deque()
        self._buf = new_receive_buffer()
        self._closed = False

    @classmethod
    async def start(cls, config: Optional[ProxyConfig] = None) -> AsyncImageProxy:
        """Spawn skopeo and initialize the connection."""
        self = cls(config)
        await self._start()
        return self

    async def _start(self) -> None:
        if self._process is not None:
            raise ProxyError("the proxy is already started")
        self._loop = asyncio.get_running_loop()
        process = await self._loop.run_in_executor(None, SkopeoProcess, self._config)
        self._process = process
        self._finalizer = weakref.finalize(self, process.terminate_and_release)
        process.sock.setblocking(False)
        self._loop.add_reader(process.sock.fileno(), self._on_readable)
        try:
            await self._run(ops.initialize(self._session))
        except BaseException as e:
            self._teardown(e if isinstance(e, ProxyError) else None)
            raise

    async def __aenter__(self) -> AsyncImageProxy:
        if self._process is None:
            await self._start()
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        with unless_already_failing(exc_type):
            await self.close()

    def __repr__(self) -> str:
        pid = self._process.pid if self._process else None
        state = "closed" if self._closed else "open"
        return f"<AsyncImageProxy pid={pid} {state}>"

    async def close(self) -> None:
        """Close the images still open, send Shutdown, reap skopeo, and raise
        ProxyExitedError if it exited non-zero."""
        process = self._process
        if process is None or not self._finalizer.alive:
            self._closed = True
            return
        failure = await self._close_open_images()
        already_failed = self._conn.failure is not None
        self._closed = True
        self._stop_watching()
        if not already_failed:
            try:
                process.sock.setblocking(True)
                process.sock.sendmsg([encode_request("Shutdown", ())])
            except OSError:
                pass
            self._fail(ProxyClosedError("the proxy was closed"))
        code = await self._loop.run_in_executor(None, process.wait, 10.0)
        if code is None:
            process.kill()
            code = process.proc.returncode
        stderr = process.stderr_tail()
        self._finalizer.detach()
        process.release()
        if code != 0 and not already_failed:
            raise ProxyExitedError(code, stderr, "shutdown")
        if failure is not None:
            raise failure

    async def _close_open_images(self) -> Optional[ProxyError]:
        """Close the images still open; the error that ended the connection meanwhile."""
        # skopeo 1.9.3 leaves an oci-archive's extracted copy in /var/tmp for an image
        # still open at Shutdown; a proxy that failed is past asking.
        if not self._closed and self._conn.failure is None and self._session.open_images:
            try:
                await self._run(ops.close_open_images(self._session))
            except ProxyError as e:
                return e  # skopeo died: close() reports it as Shutdown would have
        return None

    # --- the connection ---------------------------------------------------------------

    def _check_usable(self) -> SkopeoProcess:
        if self._conn.failure is not None:
            raise self._conn.failure
        if self._closed or self._process is None:
            raise ProxyClosedError("the proxy is closed" if self._closed else "not started")
        return self._process

    def _stop_watching(self) -> None:
        if self._process is not None and self._process.sock.fileno() >= 0:
            self._loop.remove_reader(self._process.sock.fileno())
            self._loop.remove_writer(self._process.sock.fileno())

    def _fail(self, err: ProxyError) -> None:
        for ticket in self._conn.fail(err):
            _wake(ticket)

    def _teardown(self, failure: Optional[ProxyError]) -> None:
        """Kill skopeo; outstanding and later requests fail with ``failure``."""
        self._closed = True
        self._stop_watching()
        self._fail(failure or ProxyClosedError("the proxy was torn down"))
        if self._process is not None:
            self._finalizer()

    def _submit(
        self, method: str, args: Tuple[Any, ...], *, exempt: bool = False, abandoned: bool = False
    ) -> Ticket:
        process = self._check_usable()
        data, ticket = self._conn.request(method, args, exempt=exempt)
        ticket.abandoned = abandoned
        if not abandoned:
            ticket.waiter = self._loop.create_future()
        if not self._outbox:
            try:
                process.sock.send(data)  # SEQPACKET: all of it, or EAGAIN
                return ticket
            except BlockingIOError:
                self._loop.add_writer(process.sock.fileno(), self._on_writable)
            except OSError:
                return ticket  # the reader callback sees EOF and reports the exit
        self._outbox.append(data)
        return ticket

    def _on_writable(self) -> None:
        assert self._process is not None
        while self._outbox:
            try:
                self._process.sock.send(self._outbox[0])
            except BlockingIOError:
                return
            except OSError:
                self._outbox.clear()
                break
            self._outbox.popleft()
        self._loop.remove_writer(self._process.sock.fileno())

    def _on_readable(self) -> None:
        process = self._process
        assert process is not None
        while self._conn.failure is None:
            try:
                data, fds, truncated = receive_reply(process.sock, self._buf)
            except BlockingIOError:
                return
            except OSError:
                data, fds, truncated = b"", [], False
            if not data and not fds:
                head = self._conn.pending[0].method if self._conn.pending else "idle"
                if peer_closed(process.sock):
                    self._on_connection_lost(head)
                else:
                    self._teardown(ProtocolError(f"{head}: empty reply"))
                return
            waiting = list(self._conn.pending)
            try:
                ticket, follow_ups = self._conn.receive(data, fds, truncated)
            except ProtocolError as e:
                for waiter in waiting:  # receive() failed them all: wake every one
                    _wake(waiter)
                self._teardown(e)
                return
            _wake(ticket)
            for method, args in follow_ups:
                self._submit(method, args, abandoned=True)

    def _on_connection_lost(self, context: str) -> None:
        process = self._process
        assert process is not None
        self._stop_watching()

        async def report() -> None:
            # the exit status may take a moment to be there
            err = await self._loop.run_in_executor(None, process.exited_error, context)
            self._teardown(err)

        self._loop.create_task(report())

    async def _wait(self, ticket: Ticket) -> Reply:
        fut: Optional[asyncio.Future[None]] = ticket.waiter
        if not ticket.done:
            assert fut is not None, "waiting on an abandoned ticket"
            timeout = None if ticket.exempt else self._config.stall_timeout
            try:
                if timeout is None:
                    await asyncio.shield(fut)
                else:
                    done, _ = await asyncio.wait({fut}, timeout=timeout)
                    if not done:
                        raise self._stalled(f"{ticket.method} request")
            except asyncio.CancelledError:
                if ticket.done and ticket.reply is not None:
                    # the reply came as we were cancelled: nobody will take it, release it
                    for method, args in release(ticket.method, ticket.reply):
                        self._submit(method, args, abandoned=True)
                else:
                    ticket.abandoned = True  # its reply, when it comes, is released
                raise
        return ticket.result()

    async def _call(self, method: str, args: Tuple[Any, ...]) -> Reply:
        return await self._wait(self._submit(method, args))

    def _stalled(self, context: str) -> ProxyStalledError:
        assert self._config.stall_timeout is not None and self._process is not None
        err = ProxyStalledError(self._config.stall_timeout, context, self._process.stderr_tail())
        self._teardown(err)
        return err

    async def _readable(self, fd: int, context: str, timeout: Optional[float]) -> bool:
        fut: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self._loop.add_reader(fd, ready)
        try:
            if timeout is None:
                await fut
                return True
            done, _ = await asyncio.wait({fut}, timeout=timeout)
            return bool(done)
        finally:
            self._loop.remove_reader(fd)

    async def _wait_data(self, fd: int, context: str) -> None:
        if not await self._readable(fd, context, self._config.stall_timeout):
            raise self._stalled(context)

    async def _read_all(self, fd: int, context: str) -> bytes:
        payload = MetadataBuffer(context, self._config.max_metadata_size)
        while True:
            try:
                chunk = os.read(fd, payload.room(READ_CHUNK))
            except BlockingIOError:
                await self._wait_data(fd, context)
                continue
            if not chunk:
                return payload.take()
            payload.add(chunk)

    async def _discard(self, fd: int, count: int, hasher: Any) -> int:
        buf = memoryview(bytearray(min(count, READ_CHUNK)))
        done = 0
        while done < count:
            try:
                got = os.readv(fd, [buf[: min(len(buf), count - done)]])
            except BlockingIOError:
                await self._wait_data(fd, "resuming a blob")
                continue
            if not got:
                break
            hasher.update(buf[:got])
            done += got
        return done

    # --- performing actions -----------------------------------------------------------

    async def _run(self, op: Generator[Any, Any, Any]) -> Any:
        return await ops.drive_async(op, self._perform)

    async def _perform(self, action: Any) -> Any:
        if isinstance(action, ops.Call):
            reply = await self._call(action.method, action.args)
            assert isinstance(reply, ValueReply)
            return reply.value
        if isinstance(action, ops.CallPiped):
            return await self._call_piped(action.method, action.args)
        if isinstance(action, ops.OpenStream):
            return await self._open_stream(action.method, action.args, action.spec)
        if isinstance(action, ops.Sleep):
            await asyncio.sleep(action.seconds)
            return None
        if isinstance(action, streaming.Submit):
            return self._submit(
                action.method, action.args, exempt=action.exempt, abandoned=action.abandoned
            )
        if isinstance(action, streaming.Wait):
            return await self._wait(action.ticket)
        if isinstance(action, streaming.ReadAll):
            os.set_blocking(action.fd, False)
            return await self._read_all(action.fd, action.context)
        if isinstance(action, streaming.ProxyGone):
            process = self._process
            assert process is not None
            if await self._loop.run_in_executor(None, process.wait, action.timeout) is not None:
                err = process.exited_error(action.context, 0)
                self._teardown(err)
                raise err
            return None
        if isinstance(action, streaming.Reopen):
            return await self._call(action.method, action.args)
        if isinstance(action, streaming.Discard):
            os.set_blocking(action.fd, False)
            return await self._discard(action.fd, action.count, action.hasher)
        raise TypeError(f"unknown action {action!r}")

    async def _call_piped(self, method: str, args: Tuple[Any, ...]) -> Tuple[Any, bytes]:
        reply = await self._call(method, args)
        assert isinstance(reply, PipeReply)
        try:
            os.set_blocking(reply.fd, False)
            # FinishPipe answers only once the pipe is drained: send it, then drain
            finish = self._submit("FinishPipe", (reply.pipe_id,), exempt=True)
            try:
                payload = await self._read_all(reply.fd, f"{method} payload")
            except BaseException:
                finish.abandoned = True
                raise
            try:
                await self._wait(finish)
            except RequestError as e:
                raise RequestError(method, e.message, e.error_code, e.retryable) from None
            return reply.value, payload
        finally:
            close_fds(reply.fd)

    async def _open_stream(
        self, method: str, args: Tuple[Any, ...], spec: StreamSpec
    ) -> AsyncBlobReader:
        reply = await self._call(method, args)
        try:
            ends = streaming.StreamEnds(reply, spec, method, args)
        except ProtocolError as e:
            self._teardown(e)
            raise
        early = ends.stream.early_error
        if early is not None:
            await self._run(streaming.abandon_stream(ends))
            raise early
        return AsyncBlobReader(self, ends)

    # --- public methods ---------------------------------------------------------------

    async def open_image(self, reference: Union[str, ImageReference]) -> OpenedImage:
        """Open an image, for example ``"docker://registry.example/app:1.0"``.

        Raises :class:`ImageNotFoundError` if it does not exist (what each transport can
        tell: docs/transports.md), :class:`RequestError` if it could not be looked at.
        """
        ref = ops.as_reference(reference)
        return OpenedImage(self, await self._run(ops.open_image(self._session, ref)), ref)

    async def open_image_optional(
        self, reference: Union[str, ImageReference]
    ) -> Optional[OpenedImage]:
        """Open an image, or return None exactly where :meth:`open_image` raises
        :class:`ImageNotFoundError`; other failures raise :class:`RequestError`."""
        ref = ops.as_reference(reference)
        image_id = await self._run(ops.open_image_optional(self._session, ref))
        return None if image_id is None else OpenedImage(self, image_id, ref)

    async def list_tags(self, repository: Union[str, ImageReference]) -> List[str]:
        """The tags of a repository, archive or layout: :meth:`ImageProxy.list_tags`."""
        return await catalog.list_tags_async(self._config, repository)

    async def fetch_index(
        self, reference: Union[str, ImageReference]
    ) -> Optional[Tuple[Digest, ImageIndex]]:
        """The index as stored and its digest, or None: :meth:`ImageProxy.fetch_index`."""
        return await catalog.fetch_index_async(self._config, reference)

    async def close_image(self, img: OpenedImage) -> None:
        """Release an opened image in the proxy. Closing twice is harmless."""
        if img.closed and img._owner is self:
            return
        image_id = self._session.check_image(self, img)
        img._closed = True
        if self._closed:
            return
        await self._run(ops.close_image(self._session, image_id))

    async def fetch_manifest_raw_oci(self, img: OpenedImage) -> Tuple[Digest, bytes]:
        """The image's manifest in OCI form, and the digest of the manifest as stored."""
        op = ops.fetch_manifest_raw(self._session.check_image(self, img))
        return await self._run(op)  # type: ignore[no-any-return]

    async def fetch_manifest(self, img: OpenedImage) -> Tuple[Digest, ImageManifest]:
        """The image's manifest, parsed, and the digest of the manifest as stored."""
        op = ops.fetch_manifest(self._session.check_image(self, img))
        return await self._run(op)  # type: ignore[no-any-return]

    async def fetch_config_raw(self, img: OpenedImage) -> bytes:
        """The image's OCI config as bytes."""
        op = ops.fetch_config_raw(self._session.check_image(self, img))
        return await self._run(op)  # type: ignore[no-any-return]

    async def fetch_config(self, img: OpenedImage) -> ImageConfig:
        """The image's OCI config, parsed."""
        op = ops.fetch_config(self._session.check_image(self, img))
        return await self._run(op)  # type: ignore[no-any-return]

    async def get_layer_info(self, img: OpenedImage) -> List[LayerInfo]:
        """The layers as a copy would fetch them (digest, size, media type)."""
        image_id = self._session.check_image(self, img)
        op = ops.get_layer_info(self._session, image_id, img.reference)
        return await self._run(op)  # type: ignore[no-any-return]

    async def get_blob(
        self, img: OpenedImage, digest: Union[str, Digest], size: int
    ) -> AsyncBlobReader:
        """A verified stream of one blob: size and digest are checked by the time it ends."""
        image_id = self._session.check_image(self, img)
        op = ops.get_blob(self._session, image_id, digest, size)
        return await self._run(op)  # type: ignore[no-any-return]

    async def get_descriptor(
        self, img: OpenedImage, descriptor: Union[Descriptor, LayerInfo]
    ) -> AsyncBlobReader:
        """:meth:`get_blob` for a descriptor or layer info."""
        return await self.get_blob(img, descriptor.digest, descriptor.size)

    async def get_raw_blob(
        self,
        img: OpenedImage,
        digest: Union[str, Digest],
        size: Optional[int] = None,
        *,
        verify: bool = False,
    ) -> AsyncBlobReader:
        """GetRawBlob (protocol 0.2.8): no verification in skopeo; here only if ``verify``."""
        image_id = self._session.check_image(self, img)
        op = ops.get_raw_blob(self._session, image_id, digest, size, verify)
        return await self._run(op)  # type: ignore[no-any-return]
