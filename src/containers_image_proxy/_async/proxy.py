"""The proxy of the asyncio front end, :class:`AsyncImageProxy`: it performs the actions
of ``_core.operations``.

``_async/proxy.py`` is the source of ``_sync/proxy.py`` (scripts/unasync.py). The connection
itself (``_backend.Link``) is what differs: pipelined over a loop reader in asyncio, shared
by threads in the sync front end.
"""

from __future__ import annotations

import hashlib
import os
from typing import List, Optional, Tuple, Union

from .. import _catalog as catalog
from .._config import ProxyConfig
from .._core import operations as ops
from .._core.actions import (
    Action,
    Call,
    CallPiped,
    Discard,
    JSONValue,
    Op,
    OpenStream,
    ProxyGone,
    ReadAll,
    Reopen,
    Sleep,
    Submit,
    T,
    Wait,
    assert_never,
    drive_async,
)
from .._core.protocol import Arg, MetadataBuffer, PipeReply, Reply, ValueReply
from .._core.session import FrontEnd, OpenedImage, Session, start_on_instances
from .._errors import (
    MetadataTooLargeError,
    ProtocolError,
    ProxyError,
    ProxyExitedError,
    RequestError,
    unless_already_failing,
)
from .._models import Descriptor, Digest, ImageConfig, ImageIndex, ImageManifest, LayerInfo
from .._process import SkopeoProcess
from .._reference import ImageReference, as_reference
from .._stream import ends as streaming
from .._stream.state import StreamSpec
from .._transport import READ_CHUNK, close_fds
from . import _backend as backend
from .reader import AsyncBlobReader


class AsyncImageProxy(FrontEnd):
    """A skopeo image proxy; many tasks (or threads, for the sync one) may use it at once.

    Example::

        async with AsyncImageProxy() as proxy:
            img = await proxy.open_image("oci:/srv/layout:latest")
            async with img:
                digest, manifest = await proxy.fetch_manifest(img)
                async with proxy.get_descriptor(img, manifest.layers[0]) as blob:
                    async for chunk in blob:
                        ...
    """

    _link: backend.Link

    def __init__(self, config: Optional[ProxyConfig] = None) -> None:
        self._config = config if config is not None else ProxyConfig()
        self._session = Session(self._config)
        self._link = backend.Link(self._config)
        backend.start_in_init(self._start)

    @classmethod
    async def start(cls, config: Optional[ProxyConfig] = None) -> AsyncImageProxy:
        """A started proxy: skopeo spawned and the connection initialized.

        ``proxy = await AsyncImageProxy.start(config)`` makes one; ``await proxy.start()``
        on a proxy constructed but not started starts that one (and returns it).
        """
        return await cls(config)._started()

    async def _started(self) -> AsyncImageProxy:
        if self._link.process is None:
            await self._start()
        return self

    async def _start(self) -> None:
        await self._link.open(self)
        try:
            await self._run(ops.initialize(self._session))
        except BaseException as e:
            self._link.teardown(e if isinstance(e, ProxyError) else None)
            self._link.release()
            raise

    async def __aenter__(self) -> AsyncImageProxy:
        return await self._started()

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        with unless_already_failing(exc_type):
            await self.close()

    @property
    def _process(self) -> Optional[SkopeoProcess]:
        return self._link.process

    def __repr__(self) -> str:
        process = self._link.process
        pid = process.pid if process is not None else None
        if self._link.closed:
            state = "closed"
        elif self._session.version is None:
            state = "not started"
        else:
            state = f"protocol {self._session.protocol_version}"
        return f"<{type(self).__name__} pid={pid} {state}>"

    async def close(self) -> None:
        """Close the images still open, send Shutdown, reap skopeo, and raise
        ProxyExitedError if it exited non-zero.

        In a forked child of the process that started it, only this process's copies of
        the descriptors are closed: skopeo and the parent's session are left alone.
        """
        if self._link.forked:
            self._link.disown()
            return
        failure = await self._close_open_images()
        outstanding = self._link.shut_down()
        if outstanding is not None:
            process, already_failed = outstanding
            code = await backend.wait_exit(process, 10.0)
            if code is None:
                process.kill()
                code = process.proc.returncode
            stderr = process.stderr_tail()
            self._link.detach()
            process.release()
            if code != 0 and not already_failed:
                raise ProxyExitedError(code, stderr, "shutdown")
        if failure is not None:
            raise failure

    async def _close_open_images(self) -> Optional[ProxyError]:
        """Close the images still open; the error that ended the connection meanwhile."""
        # skopeo 1.9.3 leaves an oci-archive's extracted copy in /var/tmp for an image
        # still open at Shutdown; a proxy that failed is past asking.
        if self._link.usable and self._session.open_images:
            try:
                await self._run(ops.close_open_images(self._session))
            except ProxyError as e:
                return e  # skopeo died: close() reports it as Shutdown would have
        return None

    # --- performing actions -------------------------------------------------------------

    async def _run(self, op: Op[T]) -> T:
        self._link.check_usable()
        return await drive_async(op, self._perform)

    async def _perform(self, action: Action) -> object:
        link = self._link
        if isinstance(action, Call):
            reply = await self._call(action.method, action.args)
            assert isinstance(reply, ValueReply)
            return reply.value
        elif isinstance(action, CallPiped):
            return await self._call_piped(action.method, action.args)
        elif isinstance(action, OpenStream):
            return await self._open_stream(action.method, action.args, action.spec)
        elif isinstance(action, Sleep):
            await backend.sleep(action.seconds)
            return None
        elif isinstance(action, Submit):
            return link.submit(action.method, action.args, action.exempt, action.abandoned)
        elif isinstance(action, Wait):
            return await link.wait(action.ticket)
        elif isinstance(action, ReadAll):
            return await self._read_all(action.fd, action.context)
        elif isinstance(action, ProxyGone):
            await self._unless_gone(action.timeout, action.context)
            return None
        elif isinstance(action, Reopen):
            return await self._call(action.method, action.args)
        elif isinstance(action, Discard):
            return await self._discard(action.fd, action.count, action.hasher)
        else:
            assert_never(action)

    async def _call(self, method: str, args: Tuple[Arg, ...]) -> Reply:
        return await self._link.wait(self._link.submit(method, args))

    async def _unless_gone(self, timeout: float, context: str) -> None:
        """Raise ProxyExitedError (and tear down) if skopeo exits within ``timeout``."""
        process = self._link.process
        assert process is not None
        if await backend.wait_exit(process, timeout) is not None:
            err = process.exited_error(context, 0)
            self._link.teardown(err)
            raise err

    async def _wait_data(self, fd: int, context: str) -> None:
        if not await backend.wait_readable(fd, self._config.stall_timeout):
            raise self._link.stalled(context)

    async def _read_all(self, fd: int, context: str) -> bytes:
        """A metadata payload, to EOF; MetadataTooLargeError past the configured bound."""
        os.set_blocking(fd, False)
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

    async def _discard(self, fd: int, count: int, hasher: hashlib._Hash) -> int:
        os.set_blocking(fd, False)
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

    async def _call_piped(self, method: str, args: Tuple[Arg, ...]) -> Tuple[JSONValue, bytes]:
        reply = await self._call(method, args)
        assert isinstance(reply, PipeReply)
        try:
            # FinishPipe answers only once the pipe is drained, and the pipe reaches EOF only
            # inside FinishPipe: send it first, then drain, then take its reply.
            finish = self._link.submit("FinishPipe", (reply.pipe_id,), exempt=True)
            try:
                payload = await self._read_all(reply.fd, f"{method} payload")
            except BaseException:
                finish.abandoned = True
                raise
            try:
                await self._link.wait(finish)
            except RequestError as e:
                raise RequestError(method, e.message, e.error_code, e.retryable) from None
            return reply.value, payload
        finally:
            close_fds(reply.fd)

    async def _open_stream(
        self, method: str, args: Tuple[Arg, ...], spec: StreamSpec
    ) -> AsyncBlobReader:
        reply = await self._call(method, args)
        try:
            ends = streaming.StreamEnds(reply, spec, method, args)
        except ProtocolError as e:
            self._link.teardown(e)
            raise
        early = ends.stream.early_error
        if early is not None:
            await self._run(streaming.abandon_stream(ends))
            raise early
        return AsyncBlobReader(self, ends)

    async def _open_reader(self, op: Op[object]) -> AsyncBlobReader:
        reader = await self._run(op)
        assert isinstance(reader, AsyncBlobReader)
        return reader

    # --- public methods -----------------------------------------------------------------

    async def open_image(self, reference: Union[str, ImageReference]) -> OpenedImage:
        """Open an image, for example ``"docker://registry.example/app:1.0"``.

        Raises :class:`ImageNotFoundError` if it does not exist (what each transport can
        tell: docs/transports.md), :class:`RequestError` if it could not be looked at.
        """
        ref = as_reference(reference)
        return OpenedImage(self, await self._run(ops.open_image(self._session, ref)), ref)

    async def open_image_optional(
        self, reference: Union[str, ImageReference]
    ) -> Optional[OpenedImage]:
        """Open an image, or return None exactly where :meth:`open_image` raises
        :class:`ImageNotFoundError`; other failures raise :class:`RequestError`."""
        ref = as_reference(reference)
        image_id = await self._run(ops.open_image_optional(self._session, ref))
        return None if image_id is None else OpenedImage(self, image_id, ref)

    async def list_tags(self, repository: Union[str, ImageReference]) -> List[str]:
        """The tags of ``repository``: ``docker://registry/repo`` (no tag), a
        ``docker-archive:`` file (its references, such as ``docker.io/library/x:1``) or an
        ``oci:`` layout directory (the names in its index.json), in the order listed.

        Runs ``skopeo list-tags`` with this proxy's configuration (credentials,
        certificates, TLS, registries.conf); layouts are read directly. Raises
        :class:`ImageNotFoundError` for a repository, archive or layout that is not there,
        :class:`RequestError` for other failures, :class:`ConfigurationError` for other
        transports or a reference with a tag.
        """
        return await catalog.list_tags_async(self._config, repository)

    async def fetch_index(
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
        return await catalog.fetch_index_async(self._config, reference)

    async def close_image(self, img: OpenedImage) -> None:
        """Release an opened image in the proxy. Closing twice is harmless; closing an image
        after the proxy closed does nothing. Raises :class:`ProxyError` for an image of
        another proxy, and the proxy's own failures (:class:`ProxyExitedError` ...)."""
        if img.closed and img._owner is self:
            return
        image_id = self._session.check_image(self, img)
        img._closed = True
        if self._link.closed:
            return
        await self._run(ops.close_image(self._session, image_id))

    async def fetch_manifest_raw_oci(self, img: OpenedImage) -> Tuple[Digest, bytes]:
        """The image's manifest in OCI form, and the digest of the manifest as stored.

        Raises :class:`RequestError` when skopeo refuses, :class:`ProxyError` for an image of
        another proxy or one already closed, and the proxy's own failures
        (:class:`ProxyExitedError`, :class:`ProxyStalledError`, :class:`ProtocolError`,
        :class:`MetadataTooLargeError`).
        """
        return await self._run(ops.fetch_manifest_raw(self._session.check_image(self, img)))

    async def fetch_manifest(self, img: OpenedImage) -> Tuple[Digest, ImageManifest]:
        """The image's manifest, parsed, and the digest of the manifest as stored.

        Raises :class:`RequestError` when skopeo refuses, :class:`ProxyError` for an image of
        another proxy or one already closed, and the proxy's own failures
        (:class:`ProxyExitedError`, :class:`ProxyStalledError`, :class:`ProtocolError`,
        :class:`MetadataTooLargeError`).
        """
        return await self._run(ops.fetch_manifest(self._session.check_image(self, img)))

    async def fetch_config_raw(self, img: OpenedImage) -> bytes:
        """The image's config as bytes: the OCI image config (converted from Docker's form
        if needed), or for an OCI artifact, whose config is not an image config (skopeo
        refuses those), the config blob as stored, verified against the manifest.

        Raises :class:`MetadataTooLargeError` for a config over ``max_metadata_size``,
        :class:`BlobVerificationError` for an artifact's config blob that does not match
        its descriptor, :class:`RequestError` when skopeo cannot serve it.
        """
        try:
            return await self._run(ops.fetch_config_raw(self._session.check_image(self, img)))
        except RequestError as e:
            if not ops.is_artifact_refusal(e):
                raise
        _, manifest = await self.fetch_manifest(img)
        config = manifest.config
        limit = self._config.max_metadata_size
        if config.size > limit:
            raise MetadataTooLargeError(f"config blob {config.digest}", limit)
        async with self.get_descriptor(img, config) as blob:
            data: bytes = await blob.read()
        return data

    async def fetch_config(self, img: OpenedImage) -> ImageConfig:
        """The image's OCI config, parsed.

        Raises :class:`RequestError` when skopeo refuses, :class:`ProxyError` for an image of
        another proxy or one already closed, and the proxy's own failures
        (:class:`ProxyExitedError`, :class:`ProxyStalledError`, :class:`ProtocolError`,
        :class:`MetadataTooLargeError`). An OCI artifact,
        whose config is not an image config, raises :class:`RequestError` saying so
        (:meth:`fetch_config_raw` gives its config blob).
        """
        return await self._run(ops.fetch_config(self._session.check_image(self, img)))

    async def get_layer_info(self, img: OpenedImage) -> List[LayerInfo]:
        """The layers as a copy would fetch them (digest, size, media type).

        Raises :class:`RequestError` when skopeo refuses, :class:`ProxyError` for an image of
        another proxy or one already closed, and the proxy's own failures
        (:class:`ProxyExitedError`, :class:`ProxyStalledError`, :class:`ProtocolError`,
        :class:`MetadataTooLargeError`).
        :class:`ProxyTooOldError` for ``containers-storage:`` on protocol 0.2.3.
        """
        image_id = self._session.check_image(self, img)
        return await self._run(ops.get_layer_info(self._session, image_id, img.reference))

    def get_blob(
        self, img: OpenedImage, digest: Union[str, Digest], size: Optional[int] = None
    ) -> backend.Opening[AsyncBlobReader]:
        """A verified stream of one blob: size and digest are checked by the time it ends.

        Use it as ``async with proxy.get_blob(img, digest) as blob:`` (the reader is closed
        at the end of the block) or ``blob = await proxy.get_blob(img, digest)``.

        ``size`` may be left out: the size the image's manifest gives for its config or a
        layer (the manifest is read once per image), or on protocol 0.2.8 the size skopeo
        reports. Raises :class:`ConfigurationError` for a digest the manifest does not
        reference when no size is given on skopeo before 1.19 (protocol 0.2.8), and
        :class:`RequestError` if skopeo cannot serve the blob. Where a wrong blob shows:

        - a size that differs from the one skopeo reports (a truncated blob in a layout on
          every release, and any blob of a known size on 0.2.8) raises
          :class:`BlobVerificationError` here, before any byte is read;
        - other differences (the content, a size nobody reported) raise it from the read
          that reaches the end, or from ``close()`` once every byte was read: on 0.2.8 the
          client hashes the bytes and names both digests; before, skopeo checks the stream
          and the error names the digest asked for (and the actual one when ``retries``
          made the client hash too).
        """
        return backend.opening(self._get_blob(img, digest, size))

    async def _get_blob(
        self, img: OpenedImage, digest: Union[str, Digest], size: Optional[int]
    ) -> AsyncBlobReader:
        image_id = self._session.check_image(self, img)
        op = ops.get_blob(self._session, image_id, digest, size, img.reference)
        return await self._open_reader(op)

    def get_descriptor(
        self, img: OpenedImage, descriptor: Union[Descriptor, LayerInfo]
    ) -> backend.Opening[AsyncBlobReader]:
        """:meth:`get_blob` for a descriptor or layer info (same use; raises what
        :meth:`get_blob` raises)."""
        return backend.opening(self._get_blob(img, descriptor.digest, descriptor.size))

    def get_raw_blob(
        self,
        img: OpenedImage,
        digest: Union[str, Digest],
        size: Optional[int] = None,
        *,
        verify: bool = False,
    ) -> backend.Opening[AsyncBlobReader]:
        """GetRawBlob (protocol 0.2.8): no verification in skopeo; here only if ``verify``.

        Used as :meth:`get_blob` is (``async with`` or ``await``). Raises
        :class:`ProxyTooOldError` before 0.2.8, :class:`RequestError` if skopeo cannot
        serve the blob; with ``verify``, :class:`BlobVerificationError` as :meth:`get_blob`
        does on 0.2.8.
        """
        return backend.opening(self._get_raw_blob(img, digest, size, verify))

    async def _get_raw_blob(
        self, img: OpenedImage, digest: Union[str, Digest], size: Optional[int], verify: bool
    ) -> AsyncBlobReader:
        image_id = self._session.check_image(self, img)
        op = ops.get_raw_blob(self._session, image_id, digest, size, verify)
        return await self._open_reader(op)


start_on_instances(AsyncImageProxy, "_started")
