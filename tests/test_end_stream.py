"""``end_stream``, the end of a blob stream, without a proxy: each action it yields is
answered by a :class:`testbed.script.Script`, on real pipes (the stream's descriptors)."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, List, Tuple

import pytest

from containers_image_proxy import BlobVerificationError, ProxyExitedError, RequestError
from containers_image_proxy._core.actions import (
    Discard,
    ProxyGone,
    ReadAll,
    Reopen,
    Sleep,
    Submit,
    Wait,
)
from containers_image_proxy._core.connection import Ticket
from containers_image_proxy._core.protocol import PipeReply, RawPipesReply
from containers_image_proxy._models import Digest
from containers_image_proxy._stream.ends import StreamEnds, end_stream
from containers_image_proxy._stream.state import StreamKind, StreamSpec
from testbed.script import Script

DATA = bytes(range(256)) * 40
ARGS = (1, str(Digest.of(DATA)), len(DATA))


@pytest.fixture
def pipes() -> Iterator[Callable[[], int]]:
    """Read ends of fresh pipes (their write ends closed); all closed at the end."""
    made: List[int] = []

    def make() -> int:
        r, w = os.pipe()
        os.close(w)
        made.append(r)
        return r

    yield make
    for fd in made:
        try:
            os.close(fd)
        except OSError:
            pass  # closed by the stream, as it should be


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def getblob_stream(fd: int) -> StreamEnds:
    """A GetBlob stream verified here (as with ``retries``), with half its bytes read."""
    spec = StreamSpec(StreamKind.PIPE, Digest.of(DATA), len(DATA), verify=True)
    ends = StreamEnds(PipeReply(len(DATA), 7, fd), spec, "GetBlob", ARGS)
    ends.stream.feed(DATA[: len(DATA) // 2])
    return ends


def feed_prefix(prefix: bytes) -> Callable[[Discard], int]:
    """Answer a Discard as the restarted stream would: its first bytes go to the hasher."""

    def discard(action: Discard) -> int:
        action.hasher.update(prefix[: action.count])
        return min(action.count, len(prefix))

    return discard


def interrupted() -> RequestError:
    return RequestError("FinishPipe", "connection reset by peer", "retryable", True)


def test_an_interrupted_transfer_resumes_on_a_new_pipe(pipes: Callable[[], int]) -> None:
    first, second = pipes(), pipes()
    ends = getblob_stream(first)
    ticket = Ticket("FinishPipe")
    script = Script(
        ticket,
        interrupted(),
        None,
        PipeReply(len(DATA), 8, second),
        feed_prefix(DATA),
    )
    assert script.run(end_stream(ends, retries=1)) is True
    kinds: List[Any] = [type(a) for a in script.actions]
    assert kinds == [Submit, Wait, Sleep, Reopen, Discard]
    assert script.actions[3] == Reopen("GetBlob", ARGS)
    discard = script.actions[4]
    assert isinstance(discard, Discard) and (discard.fd, discard.count) == (second, len(DATA) // 2)
    # reading goes on from the new pipe; the old one is closed
    assert (ends.data_fd, ends.pipe_id, ends.retries_used) == (second, 8, 1)
    assert not is_open(first) and is_open(second)
    ends.stream.feed(DATA[len(DATA) // 2 :])
    ends.stream.check()


def test_a_source_that_changed_while_resuming_fails_verification(
    pipes: Callable[[], int],
) -> None:
    ends = getblob_stream(pipes())
    second = pipes()
    changed = bytes(len(DATA) // 2)  # other bytes where the handed-out ones were
    script = Script(
        Ticket("FinishPipe"),
        interrupted(),
        None,
        PipeReply(len(DATA), 8, second),
        feed_prefix(changed),
    )
    with pytest.raises(BlobVerificationError, match="source changed"):
        script.run(end_stream(ends, retries=1))


def test_a_short_restarted_stream_fails_verification(pipes: Callable[[], int]) -> None:
    ends = getblob_stream(pipes())
    script = Script(
        Ticket("FinishPipe"),
        interrupted(),
        None,
        PipeReply(len(DATA), 8, pipes()),
        feed_prefix(DATA[:10]),
    )
    with pytest.raises(BlobVerificationError, match="source changed"):
        script.run(end_stream(ends, retries=1))


def test_no_retry_left_raises_the_interruption(pipes: Callable[[], int]) -> None:
    fd = pipes()
    ends = getblob_stream(fd)
    script = Script(Ticket("FinishPipe"), interrupted())
    with pytest.raises(RequestError, match="connection reset"):
        script.run(end_stream(ends, retries=0))
    assert [type(a) for a in script.actions] == [Submit, Wait]
    assert not is_open(fd)


def raw_stream(pipes: Callable[[], int]) -> Tuple[StreamEnds, int, int]:
    """A GetRawBlob stream that reached EOF after half its bytes."""
    data_fd, error_fd = pipes(), pipes()
    spec = StreamSpec(StreamKind.RAW, Digest.of(DATA), len(DATA), verify=True)
    ends = StreamEnds(RawPipesReply(len(DATA), data_fd, error_fd), spec, "GetRawBlob", ARGS[:2])
    ends.stream.feed(DATA[: len(DATA) // 2])
    return ends, data_fd, error_fd


def test_a_short_raw_stream_with_skopeo_gone_is_the_exit(pipes: Callable[[], int]) -> None:
    ends, data_fd, error_fd = raw_stream(pipes)
    gone = ProxyExitedError(-9, "", "GetRawBlob")
    script = Script(b"", gone)
    with pytest.raises(ProxyExitedError):
        script.run(end_stream(ends, retries=3))
    assert script.actions == [
        ReadAll(error_fd, ends.context()),
        ProxyGone(0.5, ends.context()),
    ]
    assert not is_open(data_fd) and not is_open(error_fd)


def test_a_short_raw_stream_with_skopeo_alive_is_a_short_blob(pipes: Callable[[], int]) -> None:
    ends, _, _ = raw_stream(pipes)
    script = Script(b"", None)
    with pytest.raises(BlobVerificationError, match="expected"):
        script.run(end_stream(ends, retries=3))
    assert [type(a) for a in script.actions] == [ReadAll, ProxyGone]


def test_a_raw_stream_error_is_reported(pipes: Callable[[], int]) -> None:
    ends, _, _ = raw_stream(pipes)
    report = b'{"code": "other", "message": "blob unknown to registry"}'
    with pytest.raises(RequestError, match="blob unknown"):
        Script(report).run(end_stream(ends, retries=0))
