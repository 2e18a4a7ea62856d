"""The asyncio front end: :class:`AsyncImageProxy` and :class:`AsyncBlobReader`.

Requests are pipelined: each is sent at once and its future queued; replies come back in
order and a reader callback on the socket resolves the futures first in, first out. A task
cancelled while waiting leaves its future in the queue, so the reply stream never shifts;
when its reply comes, whatever it carries is released (fds closed, FinishPipe or CloseImage
sent for it) instead of being leaked.
"""

from __future__ import annotations

import asyncio
import collections
import os
import weakref
from typing import Any, AsyncIterator, Deque, List, Optional, Tuple, Union

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
    RawPipesReply,
    Reply,
    ValueReply,
    decode_raw_blob_error,
    decode_reply,
    encode_request,
)
from ._reference import ImageReference
from ._transport import READ_CHUNK, close_fds, new_receive_buffer, peer_closed, receive_reply

_IMAGE_OPENERS = ("OpenImage", "OpenImageOptional")


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # a future nobody awaits must still have its exception fetched, or asyncio logs it
    if not fut.cancelled():
        fut.exception()


class AsyncImageProxy:
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
        self._pending: Deque[Tuple[str, asyncio.Future[Reply]]] = collections.deque()
        self._outbox: Deque[bytes] = collections.deque()
        self._buf = new_receive_buffer()
        self._failure: Optional[ProxyError] = None
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
        if exc_type is None:
            await self.close()
        else:
            try:
                await self.close()
            except ProxyError:
                pass

    def __repr__(self) -> str:
        pid = self._process.pid if self._process else None
        state = "closed" if self._closed else "open"
        return f"<AsyncImageProxy pid={pid} {state}>"

    @property
    def config(self) -> ProxyConfig:
        """The configuration this proxy was started with."""
        return self._config

    @property
    def protocol_version(self) -> str:
        """The protocol version skopeo reported, for example ``"0.2.8"``."""
        return self._session.protocol_version

    def supports(self, feature: Union[Feature, str]) -> bool:
        """Whether this skopeo offers ``feature`` natively."""
        return self._session.supports(feature)

    async def close(self) -> None:
        """Send Shutdown, reap skopeo, and raise ProxyExitedError if it exited non-zero."""
        if self._closed or self._process is None:
            self._closed = True
            return
        self._closed = True
        process = self._process
        self._stop_watching()
        if self._failure is None:
            try:
                process.sock.setblocking(True)
                process.sock.sendmsg([encode_request("Shutdown", ())])
            except OSError:
                pass
        code = await self._loop.run_in_executor(None, process.wait, 10.0)
        if code is None:
            process.kill()
            code = process.proc.returncode
        stderr = process.stderr_tail()
        self._finalizer.detach()
        process.release()
        self._fail_pending(ProxyClosedError("the proxy was closed"))
        if code != 0 and self._failure is None:
            raise ProxyExitedError(code, stderr, "shutdown")

    # --- the connection ---------------------------------------------------------------

    def _check_usable(self) -> SkopeoProcess:
        if self._failure is not None:
            raise self._failure
        if self._closed or self._process is None:
            raise ProxyClosedError("the proxy is closed" if self._closed else "not started")
        return self._process

    def _stop_watching(self) -> None:
        if self._process is not None and self._process.sock.fileno() >= 0:
            self._loop.remove_reader(self._process.sock.fileno())
            self._loop.remove_writer(self._process.sock.fileno())

    def _fail_pending(self, err: BaseException) -> None:
        while self._pending:
            _, fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(err)
                fut.add_done_callback(_retrieve)

    def _teardown(self, failure: Optional[ProxyError]) -> None:
        """Kill skopeo; pending and later requests fail with ``failure``."""
        if self._failure is None:
            self._failure = failure or ProxyClosedError("the proxy was torn down")
        self._closed = True
        self._stop_watching()
        self._fail_pending(self._failure)
        if self._process is not None:
            self._finalizer()

    def _submit(self, method: str, args: Tuple[Any, ...]) -> asyncio.Future[Reply]:
        process = self._check_usable()
        request = encode_request(method, args)
        fut: asyncio.Future[Reply] = self._loop.create_future()
        self._pending.append((method, fut))
        if not self._outbox:
            try:
                process.sock.send(request)  # SEQPACKET: all of it, or EAGAIN
                return fut
            except BlockingIOError:
                self._loop.add_writer(process.sock.fileno(), self._on_writable)
            except OSError:
                self._on_connection_lost(method)
                return fut
        self._outbox.append(request)
        return fut

    def _on_writable(self) -> None:
        assert self._process is not None
        while self._outbox:
            try:
                self._process.sock.send(self._outbox[0])
            except BlockingIOError:
                return
            except OSError:
                self._on_connection_lost("sending a request")
                return
            self._outbox.popleft()
        self._loop.remove_writer(self._process.sock.fileno())

    def _on_readable(self) -> None:
        assert self._process is not None
        while self._failure is None:
            try:
                data, fds, truncated = receive_reply(self._process.sock, self._buf)
            except BlockingIOError:
                return
            except OSError:
                data, fds, truncated = b"", [], False
            if not data and not fds:
                method = self._pending[0][0] if self._pending else "idle"
                if not peer_closed(self._process.sock):
                    self._teardown(ProtocolError(f"{method}: empty reply"))
                    return
                self._on_connection_lost(method)
                return
            if not self._pending:
                close_fds(*fds)
                self._teardown(ProtocolError("reply received with no request outstanding"))
                return
            method, fut = self._pending.popleft()
            try:
                reply = decode_reply(method, data, fds, truncated)
            except RequestError as e:
                if not fut.done():
                    fut.set_exception(e)
                continue
            except ProtocolError as e:
                if not fut.done():
                    fut.set_exception(e)
                    fut.add_done_callback(_retrieve)
                self._teardown(e)
                return
            if fut.done():  # its caller was cancelled: release what the reply holds
                self._discard(method, reply)
            else:
                fut.set_result(reply)

    def _discard(self, method: str, reply: Reply) -> None:
        if isinstance(reply, PipeReply):
            close_fds(reply.fd)
            self._submit("FinishPipe", (reply.pipe_id,)).cancel()
        elif isinstance(reply, RawPipesReply):
            close_fds(reply.data_fd, reply.error_fd)
        elif method in _IMAGE_OPENERS and isinstance(reply.value, int) and reply.value > 0:
            self._submit("CloseImage", (reply.value,)).cancel()

    def _on_connection_lost(self, context: str) -> None:
        process = self._process
        assert process is not None
        self._stop_watching()
        # the exit status may take a moment to be there; meanwhile nothing more is sent
        placeholder = ProxyExitedError(None, "", context)
        self._failure = placeholder

        async def report() -> None:
            err = await self._loop.run_in_executor(None, process.exited_error, context)
            self._failure = None
            self._teardown(err)

        self._loop.create_task(report())

    async def _reply(self, fut: asyncio.Future[Reply], context: str) -> Reply:
        timeout = self._config.stall_timeout
        try:
            if timeout is None:
                return await fut
            done, _ = await asyncio.wait({fut}, timeout=timeout)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        if not done:
            fut.cancel()
            raise self._stalled(context)
        return fut.result()

    def _stalled(self, context: str) -> ProxyStalledError:
        assert self._config.stall_timeout is not None and self._process is not None
        err = ProxyStalledError(self._config.stall_timeout, context, self._process.stderr_tail())
        self._teardown(err)
        return err

    async def _readable(self, fd: int, context: str) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self._loop.add_reader(fd, ready)
        try:
            timeout = self._config.stall_timeout
            if timeout is None:
                await fut
            else:
                done, _ = await asyncio.wait({fut}, timeout=timeout)
                if not done:
                    raise self._stalled(context)
        finally:
            self._loop.remove_reader(fd)

    async def _read_fd(self, fd: int, size: int, context: str) -> bytes:
        while True:
            try:
                return os.read(fd, size)
            except BlockingIOError:
                await self._readable(fd, context)

    # --- performing actions -----------------------------------------------------------

    async def _run(self, op: ops.Op) -> Any:
        return await ops.drive_async(op, self._perform)

    async def _perform(self, action: ops.Action) -> Any:
        if isinstance(action, ops.Call):
            reply = await self._reply(self._submit(action.method, action.args), action.method)
            assert isinstance(reply, ValueReply)
            return reply.value
        if isinstance(action, ops.CallPiped):
            return await self._call_piped(action.method, action.args)
        if isinstance(action, ops.Sleep):
            await asyncio.sleep(action.seconds)
            return None
        return await self._open_stream(action.method, action.args, action.spec)

    async def _call_piped(self, method: str, args: Tuple[Any, ...]) -> Tuple[Any, bytes]:
        reply = await self._reply(self._submit(method, args), method)
        assert isinstance(reply, PipeReply)
        try:
            os.set_blocking(reply.fd, False)
            # FinishPipe answers only once the pipe is drained: send it, then drain
            finish = self._submit("FinishPipe", (reply.pipe_id,))
            chunks: List[bytes] = []
            try:
                while True:
                    chunk = await self._read_fd(reply.fd, READ_CHUNK, f"{method} payload")
                    if not chunk:
                        break
                    chunks.append(chunk)
            except BaseException:
                finish.cancel()
                raise
            try:
                await self._reply(finish, f"FinishPipe of {method}")
            except RequestError as e:
                raise RequestError(method, e.message, e.error_code, e.retryable) from None
            return reply.value, b"".join(chunks)
        finally:
            close_fds(reply.fd)

    async def _open_stream(
        self, method: str, args: Tuple[Any, ...], spec: StreamSpec
    ) -> AsyncBlobReader:
        reply = await self._reply(self._submit(method, args), method)
        try:
            reader = AsyncBlobReader(self, reply, spec)
        except ProtocolError as e:
            self._teardown(e)
            raise
        early = reader._stream.early_error
        if early is not None:
            await reader.close_quietly()
            raise early
        return reader

    # --- public methods ---------------------------------------------------------------

    async def open_image(self, reference: Union[str, ImageReference]) -> OpenedImage:
        """Open an image, for example ``"docker://registry.example/app:1.0"``."""
        ref = ops.as_reference(reference)
        return OpenedImage(self, await self._run(ops.open_image(self._session, ref)), ref)

    async def open_image_optional(
        self, reference: Union[str, ImageReference]
    ) -> Optional[OpenedImage]:
        """Open an image, or return None if it does not exist (emulated before 0.2.4)."""
        ref = ops.as_reference(reference)
        image_id = await self._run(ops.open_image_optional(self._session, ref))
        return None if image_id is None else OpenedImage(self, image_id, ref)

    async def close_image(self, img: OpenedImage) -> None:
        """Release an opened image in the proxy. Closing twice is harmless."""
        if img.closed and img._owner is self:
            return
        image_id = self._session.check_image(self, img)
        img._closed = True
        if self._closed:
            return
        await self._run(ops.close_image(image_id))

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


class AsyncBlobReader:
    """A blob streamed from the proxy, for asyncio: ``await read(n)``, ``async for chunk``.

    Reaching the end verifies size and digest; closing early is allowed and cheap.
    """

    def __init__(self, proxy: AsyncImageProxy, reply: Reply, spec: StreamSpec) -> None:
        self._proxy = proxy
        self._ends = StreamEnds(reply, spec)
        self._stream = self._ends.stream
        os.set_blocking(self._ends.data_fd, False)
        if self._ends.error_fd >= 0:
            os.set_blocking(self._ends.error_fd, False)
        self._ended = False
        self._closed = False

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

    @property
    def closed(self) -> bool:
        """Whether the reader is closed."""
        return self._closed

    async def readinto(self, b: Any) -> int:
        """Read into a writable buffer; 0 at the end (after verification)."""
        view = memoryview(b).cast("B")
        if self._closed:
            raise ValueError("read from a closed AsyncBlobReader")
        if self._ended:
            self._stream.check()
            return 0
        n = self._stream.want(len(view))
        if n == 0:
            await self._end()
            return 0
        chunk = view[:n]
        context = f"{self._stream.spec.kind.value} of {self.digest}"
        while True:
            try:
                got = os.readv(self._ends.data_fd, [chunk])
                break
            except BlockingIOError:
                await self._proxy._readable(self._ends.data_fd, context)
        if got == 0:
            await self._end()
            return 0
        self._stream.feed(chunk[:got])
        if self._stream.overflowed:
            await self._end()
        return got

    async def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all that is left when negative)."""
        if size < 0:
            parts: List[bytes] = []
            while True:
                part = await self.read(READ_CHUNK)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        buf = bytearray(size)
        n = await self.readinto(buf)
        del buf[n:]
        return bytes(buf)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read(READ_CHUNK)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            if self._stream.spec.kind is StreamKind.PIPE:
                await self._finish_pipe(early=False)
            elif not self._stream.overflowed:
                await self._finish_raw()
        finally:
            self._ends.close()
        self._stream.check()

    async def _finish_pipe(self, early: bool) -> None:
        try:
            await self._proxy._run(ops.finish_pipe(self._ends.pipe_id))
        except RequestError as e:
            if not (early and self._stream.is_broken_pipe(e)):
                self._stream.finish_pipe_result(e)

    async def _finish_raw(self) -> None:
        chunks = []
        context = f"GetRawBlob of {self.digest}"
        while True:
            chunk = await self._proxy._read_fd(self._ends.error_fd, 65536, context)
            if not chunk:
                break
            chunks.append(chunk)
        error = decode_raw_blob_error(b"".join(chunks))
        if self._ends.missing_bytes_without_error(error):
            process = self._proxy._process
            assert process is not None
            code = await self._proxy._loop.run_in_executor(None, process.wait, 0.5)
            if code is not None:
                err = process.exited_error(context, 0)
                self._proxy._teardown(err)
                raise err
        self._stream.raw_result(error)

    async def close(self) -> None:
        """Close the stream. If every byte was read, this verifies and may raise."""
        if self._closed:
            return
        try:
            if not self._ended and self._stream.complete:
                await self._end()
        finally:
            await self.close_quietly()

    aclose = close

    async def close_quietly(self) -> None:
        """Abandon the stream: close our ends; the proxy sees EPIPE and stays usable."""
        if self._closed:
            return
        self._closed = True
        self._ends.close()
        if not self._ended:
            self._ended = True
            if self._stream.spec.kind is StreamKind.PIPE and self._proxy._failure is None:
                try:
                    await self._finish_pipe(early=True)
                except ProxyError:
                    pass

    async def __aenter__(self) -> AsyncBlobReader:
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.close_quietly()

    def __del__(self) -> None:
        ends = getattr(self, "_ends", None)
        if ends is not None:
            ends.close()
