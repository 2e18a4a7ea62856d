"""Unit tests of the sans-IO protocol core: no process, no socket."""

from __future__ import annotations

import json
import os
from typing import Any, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from containers_image_proxy import (
    BlobVerificationError,
    ConfigurationError,
    MetadataTooLargeError,
    ProtocolError,
    ProxyTooOldError,
    RequestError,
)
from containers_image_proxy._core.connection import Connection
from containers_image_proxy._core.protocol import (
    MAX_JSON_DEPTH,
    MAX_JSON_INT,
    MAX_REQUEST_SIZE,
    Feature,
    MetadataBuffer,
    PipeReply,
    RawPipesReply,
    ValueReply,
    check_minimum_version,
    decode_json,
    decode_raw_blob_error,
    decode_reply,
    encode_request,
    has_feature,
    is_not_found,
    is_retryable,
    parse_version,
    require_feature,
)
from containers_image_proxy._models import Digest
from containers_image_proxy._stream.ends import StreamEnds
from containers_image_proxy._stream.state import BlobStream, StreamKind, StreamSpec


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def pipe_fds() -> Any:
    made: List[int] = []

    def make(n: int) -> List[int]:
        out = []
        for _ in range(n):
            r, w = os.pipe()
            os.close(w)
            made.append(r)
            out.append(r)
        return out

    yield make
    for fd in made:
        try:
            os.close(fd)
        except OSError:
            pass


def reply(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# --- requests ---------------------------------------------------------------------------


def test_encode_request_is_compact_json() -> None:
    data = encode_request("GetBlob", (1, "sha256:" + "a" * 64, 12))
    assert json.loads(data) == {"method": "GetBlob", "args": [1, "sha256:" + "a" * 64, 12]}
    assert b" " not in data


@pytest.mark.parametrize("arg", [-1, MAX_JSON_INT + 1, True, 1.5, None, [1]])
def test_encode_request_rejects_what_the_proxy_cannot_take(arg: Any) -> None:
    with pytest.raises(ConfigurationError):
        encode_request("OpenImage", (arg,))


def test_encode_request_refuses_requests_over_the_proxy_buffer() -> None:
    encode_request("OpenImage", ("x" * (MAX_REQUEST_SIZE - 100),))
    with pytest.raises(ConfigurationError, match="exceeds"):
        encode_request("OpenImage", ("x" * MAX_REQUEST_SIZE,))


# --- versions and features ----------------------------------------------------------------


def test_parse_version() -> None:
    assert parse_version("0.2.8") == (0, 2, 8)
    for bad in ("0.2", "v0.2.3", "0.2.3-dev", 3, None, ""):
        with pytest.raises(ProtocolError):
            parse_version(bad)


def test_minimum_version() -> None:
    check_minimum_version((0, 2, 3))
    with pytest.raises(ProxyTooOldError) as e:
        check_minimum_version((0, 2, 2))
    assert e.value.found == "0.2.2" and e.value.required == "0.2.3"


@pytest.mark.parametrize(
    "version,feature,expected",
    [
        ((0, 2, 3), Feature.FULL_CONFIG, True),
        ((0, 2, 3), Feature.OPEN_IMAGE_OPTIONAL, False),
        ((0, 2, 4), Feature.OPEN_IMAGE_OPTIONAL, True),
        ((0, 2, 5), Feature.LAYER_INFO, True),
        ((0, 2, 5), Feature.POLICY_ENFORCEMENT, False),
        ((0, 2, 6), Feature.POLICY_ENFORCEMENT, True),
        ((0, 2, 6), Feature.LAYER_INFO_PIPED, False),
        ((0, 2, 7), Feature.LAYER_INFO_PIPED, True),
        ((0, 2, 7), Feature.RAW_BLOB, False),
        ((0, 2, 8), Feature.RAW_BLOB, True),
        ((0, 3, 0), Feature.RAW_BLOB, True),
    ],
)
def test_feature_table(version: Any, feature: Feature, expected: bool) -> None:
    assert has_feature(version, feature) is expected
    assert has_feature(version, feature.value) is expected


def test_unknown_feature_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown feature"):
        has_feature((0, 2, 8), "teleport")


def test_require_feature_names_the_release() -> None:
    with pytest.raises(ProxyTooOldError) as e:
        require_feature((0, 2, 3), Feature.RAW_BLOB, "get_raw_blob")
    assert "0.2.8" in str(e.value) and "1.19" in str(e.value) and "0.2.3" in str(e.value)


# --- replies ----------------------------------------------------------------------------


def test_value_reply() -> None:
    r = decode_reply("OpenImage", reply(success=True, value=3, pipeid=0, error=""), [])
    assert r == ValueReply(3)


def test_pipe_reply(pipe_fds: Any) -> None:
    (fd,) = pipe_fds(1)
    r = decode_reply("GetManifest", reply(success=True, value="sha256:x", pipeid=7), [fd])
    assert r == PipeReply("sha256:x", 7, fd)
    assert fd_is_open(fd)


def test_raw_pipes_reply(pipe_fds: Any) -> None:
    a, b = pipe_fds(2)
    r = decode_reply("GetRawBlob", reply(success=True, value=10, pipeid=0), [a, b])
    assert r == RawPipesReply(10, a, b)


def test_error_reply_becomes_request_error() -> None:
    data = reply(success=False, value=None, pipeid=0, error="manifest unknown", error_code="other")
    with pytest.raises(RequestError) as e:
        decode_reply("OpenImage", data, [])
    assert e.value.method == "OpenImage"
    assert e.value.message == "manifest unknown"
    assert e.value.error_code == "other"
    assert e.value.retryable is False


def test_error_reply_retryable_code() -> None:
    data = reply(success=False, pipeid=0, error="read: i/o error", error_code="retryable")
    with pytest.raises(RequestError) as e:
        decode_reply("GetRawBlob", data, [])
    assert e.value.retryable is True


def test_absent_content_is_never_retryable() -> None:
    # skopeo 1.22 codes a registry's "blob unknown" as retryable: asking again is in vain
    data = reply(success=False, pipeid=0, error="blob unknown to registry", error_code="retryable")
    with pytest.raises(RequestError) as e:
        decode_reply("GetRawBlob", data, [])
    assert e.value.error_code == "retryable" and e.value.retryable is False
    assert not is_retryable("open /l/blobs/sha256/ab: no such file or directory", "retryable")
    assert not is_retryable("invalid status code from registry 404 (Not Found)", None)


def test_error_reply_without_code_is_classified_from_text() -> None:
    data = reply(success=False, pipeid=0, error="read tcp: connection reset by peer")
    with pytest.raises(RequestError) as e:
        decode_reply("GetBlob", data, [])
    assert e.value.error_code is None and e.value.retryable is True


MALFORMED = [
    (b"not json", 0),
    (b"[1,2]", 0),
    (b'"string"', 0),
    (reply(value=1), 0),  # no success
    (reply(success="yes", value=1), 0),
    (reply(success=True, value=1, pipeid=-1), 0),
    (reply(success=True, value=1, pipeid=2**32), 0),
    (reply(success=True, value=1, pipeid="1"), 0),
    (reply(success=True, value=1, pipeid=True), 0),
    (reply(success=False, pipeid=0), 0),  # error without message
    (reply(success=False, pipeid=0, error=3), 0),
    (reply(success=False, pipeid=0, error="x", error_code="weird"), 0),
    (reply(success=False, pipeid=0, error="x"), 1),  # error carrying an fd
    (reply(success=True, value=1, pipeid=0), 1),  # value reply with an fd
    (reply(success=True, value=1, pipeid=4), 0),  # value reply with a pipe id
    (b"\xff\xfe", 0),
]


@pytest.mark.parametrize("data,nfds", MALFORMED)
def test_malformed_replies_are_protocol_errors_and_close_fds(
    data: bytes, nfds: int, pipe_fds: Any
) -> None:
    fds = pipe_fds(nfds)
    with pytest.raises(ProtocolError):
        decode_reply("OpenImage", data, fds)
    assert not any(fd_is_open(fd) for fd in fds)


@pytest.mark.parametrize(
    "method,pipeid,nfds",
    [
        ("GetManifest", 3, 0),  # id without pipe (0 is a valid id: skopeo's fd number)
        ("GetManifest", 3, 2),  # extra fd
        ("GetBlob", 5, 3),
        ("GetRawBlob", 0, 1),  # missing error fd
        ("GetRawBlob", 0, 3),
        ("GetRawBlob", 9, 2),  # raw pipes never have an id
    ],
)
def test_wrong_fd_counts(method: str, pipeid: int, nfds: int, pipe_fds: Any) -> None:
    fds = pipe_fds(nfds)
    with pytest.raises(ProtocolError):
        decode_reply(method, reply(success=True, value=1, pipeid=pipeid), fds)
    assert not any(fd_is_open(fd) for fd in fds)


def test_truncated_reply_is_a_protocol_error(pipe_fds: Any) -> None:
    fds = pipe_fds(1)
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_reply("GetManifest", reply(success=True, value="x", pipeid=1), fds, True)
    assert not fd_is_open(fds[0])


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_other_errors(data: bytes) -> None:
    try:
        decode_reply("GetManifest", data, [])
    except (ProtocolError, RequestError):
        pass


json_values = st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.just([])
field_names = ["success", "value", "pipeid", "error", "error_code", "x"]


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(
    st.dictionaries(st.sampled_from(field_names), json_values | st.sampled_from(["other", ""])),
    st.sampled_from(["OpenImage", "GetManifest", "GetRawBlob", "FinishPipe"]),
    st.integers(min_value=0, max_value=3),
)
def test_fuzzed_reply_objects(obj: Any, method: str, nfds: int) -> None:
    fds = []
    for _ in range(nfds):
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    try:
        result = decode_reply(method, json.dumps(obj).encode(), fds)
    except (ProtocolError, RequestError):
        assert not any(fd_is_open(fd) for fd in fds)
        return
    held = set()
    if isinstance(result, PipeReply):
        held = {result.fd}
    elif isinstance(result, RawPipesReply):
        held = {result.data_fd, result.error_fd}
    assert held == set(fds)
    for fd in fds:
        os.close(fd)


# --- hostile JSON: nesting, encoding, size ---------------------------------------------


def nested(depth: int, inner: bytes = b"1") -> bytes:
    """``depth`` arrays and objects in turn around ``inner``."""
    head = b"".join(b"[" if i % 2 else b'{"k":' for i in range(depth))
    tail = b"".join(b"]" if i % 2 else b"}" for i in reversed(range(depth)))
    return head + inner + tail


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 50_000])
def test_deep_reply_is_a_protocol_error_and_closes_fds(depth: int, pipe_fds: Any) -> None:
    # 50,000 levels overflow json's own recursion; MAX_JSON_DEPTH + 1 decodes but is refused
    fds = pipe_fds(1)
    data = b'{"success":true,"pipeid":3,"value":' + nested(depth) + b"}"
    with pytest.raises(ProtocolError, match=f"nested more than {MAX_JSON_DEPTH} levels"):
        decode_reply("GetManifest", data, fds)
    assert not fd_is_open(fds[0])


def test_nesting_up_to_the_bound_is_accepted() -> None:
    # the reply object itself is one level: the value may nest one less than the bound
    data = b'{"success":true,"pipeid":0,"value":' + nested(MAX_JSON_DEPTH - 1) + b"}"
    value = decode_reply("OpenImage", data, []).value  # type: ignore[union-attr]
    depth = 0
    while isinstance(value, (dict, list)):
        value = value["k"] if isinstance(value, dict) else value[0]
        depth += 1
    assert depth == MAX_JSON_DEPTH - 1 and value == 1


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = "[" * (4 * MAX_JSON_DEPTH)
    assert decode_json(json.dumps({"a": [text, {"b": text}]}).encode(), "x") == {
        "a": [text, {"b": text}]
    }


@pytest.mark.parametrize(
    "data",
    [b'{"a":"\xff"}', b'"\xc3\x28"', b'{"a":', b"", b"\x00", b"[1]]"],
)
def test_undecodable_json_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="GetLayerInfoPiped: not valid JSON"):
        decode_json(data, "GetLayerInfoPiped")


def test_deep_raw_blob_error_payload() -> None:
    with pytest.raises(ProtocolError, match="nested"):
        decode_raw_blob_error(nested(50_000))


def test_reply_over_the_limit_names_the_limit_not_the_content(pipe_fds: Any) -> None:
    fds = pipe_fds(1)
    secret = "s3cr3t-" * 1000
    data = reply(success=True, value=secret, pipeid=2)
    with pytest.raises(MetadataTooLargeError) as caught:
        decode_reply("GetManifest", data, fds, limit=len(data) - 1)
    assert not fd_is_open(fds[0])
    err = caught.value
    assert isinstance(err, ProtocolError) and err.limit == len(data) - 1
    assert str(err) == (
        f"GetManifest reply: larger than the {len(data) - 1}-byte metadata limit"
        " (ProxyConfig.max_metadata_size)"
    )
    assert "s3cr3t" not in str(err) and "s3cr3t" not in repr(err)
    assert isinstance(decode_reply("GetManifest", data, pipe_fds(1), limit=len(data)), PipeReply)


def test_connection_refuses_replies_over_its_limit() -> None:
    conn = Connection(max_reply_size=64)
    _, first = conn.request("GetLayerInfo", (1,))
    _, second = conn.request("CloseImage", (1,))
    with pytest.raises(MetadataTooLargeError):
        conn.receive(reply(success=True, value=["x" * 64], pipeid=0), [], False)
    for ticket in (first, second):
        with pytest.raises(MetadataTooLargeError):
            ticket.result()


@pytest.mark.parametrize("limit", [1, 10, 4096])
def test_metadata_buffer_holds_at_most_one_byte_past_the_limit(limit: int) -> None:
    source = bytes(range(256)) * 64  # 16 KiB, more than every limit here
    buf = MetadataBuffer("GetManifest payload", limit)
    offered = 0
    with pytest.raises(MetadataTooLargeError, match=f"{limit}-byte"):
        while True:
            want = buf.room(1000)
            assert 1 <= want <= 1000
            chunk = source[offered : offered + want]
            offered += len(chunk)
            buf.add(chunk)
    assert offered == limit + 1  # the reads asked for one byte past the limit, no more
    exact = MetadataBuffer("x", limit)
    for i in range(0, limit, 7):
        exact.add(source[i : min(limit, i + 7)])
    assert exact.room(1000) == 1 and exact.take() == source[:limit]


# --- error classification --------------------------------------------------------------


@pytest.mark.parametrize(
    "message,found",
    [
        ("reading manifest latest in 127.0.0.1:5000/x: manifest unknown: manifest unknown", True),
        ('no descriptor found for reference "missing"', True),
        ("identifier is not an image", True),
        ("open /nope/index.json: no such file or directory", False),
        ("x509: certificate signed by unknown authority", False),
        ("unauthorized: authentication required", False),
    ],
)
def test_not_found_classification(message: str, found: bool) -> None:
    assert is_not_found(message) is found


def test_retryable_classification() -> None:
    assert is_retryable("anything", "retryable")
    # skopeo 1.22 codes a body cut short as "other": the text still tells
    assert is_retryable("reading blob: unexpected EOF", "other")
    assert not is_retryable("manifest unknown", "other")
    assert not is_retryable("write: broken pipe", "EPIPE")
    assert is_retryable("read: connection reset by peer", None)
    assert is_retryable("unexpected EOF", None)
    assert not is_retryable("manifest unknown", None)


def test_raw_blob_error_pipe() -> None:
    assert decode_raw_blob_error(b"") is None
    err = decode_raw_blob_error(b'{"code":"retryable","message":"unexpected EOF"}')
    assert isinstance(err, RequestError) and err.retryable and err.error_code == "retryable"
    for bad in (b"nope", b"[]", b'{"code":"bogus","message":"x"}', b'{"code":"other"}'):
        with pytest.raises(ProtocolError):
            decode_raw_blob_error(bad)


# --- blob streams ----------------------------------------------------------------------

DATA = b"hello blob" * 10
DIGEST = Digest.of(DATA)


def spec(kind: StreamKind, size: Any = len(DATA), verify: bool = True) -> StreamSpec:
    return StreamSpec(kind, DIGEST, size, verify)


def test_pipe_stream_reads_exactly_the_size() -> None:
    s = BlobStream(spec(StreamKind.PIPE, verify=False), len(DATA))
    assert s.want(1 << 20) == len(DATA)
    s.feed(DATA[:30])
    assert s.want(1 << 20) == len(DATA) - 30
    s.feed(DATA[30:])
    assert s.want(1 << 20) == 0 and s.complete
    s.finish_pipe_result(None)
    s.check()


def test_raw_stream_probes_for_eof_after_the_size() -> None:
    s = BlobStream(spec(StreamKind.RAW), len(DATA))
    s.feed(DATA)
    assert s.want(1 << 20) == 1  # one more read must see EOF
    s.raw_result(None)
    s.check()


def test_raw_stream_digest_mismatch() -> None:
    s = BlobStream(spec(StreamKind.RAW), len(DATA))
    s.feed(DATA[:-1] + b"X")
    with pytest.raises(BlobVerificationError, match="content has digest"):
        s.check()


def test_raw_stream_short_and_long() -> None:
    s = BlobStream(spec(StreamKind.RAW), -1)
    s.feed(DATA[:-3])
    with pytest.raises(BlobVerificationError, match="expected"):
        s.check()
    s = BlobStream(spec(StreamKind.RAW), -1)
    s.feed(DATA + b"extra")
    assert s.overflowed
    with pytest.raises(BlobVerificationError, match="more than"):
        s.check()


def test_reported_size_mismatch_is_known_before_reading() -> None:
    s = BlobStream(spec(StreamKind.PIPE, size=len(DATA) + 5), len(DATA))
    assert isinstance(s.early_error, BlobVerificationError)


def test_unverified_raw_stream_of_unknown_size() -> None:
    s = BlobStream(spec(StreamKind.RAW, size=None, verify=False), -1)
    assert s.size is None and s.want(4096) == 4096
    s.feed(b"whatever")
    s.raw_result(None)
    s.check()


@pytest.mark.parametrize(
    "message,kind",
    [
        ("corrupted blob, expecting sha256:abc", BlobVerificationError),
        ("expected 10 bytes in blob, got 7", BlobVerificationError),
        ("unexpected EOF", RequestError),
    ],
)
def test_finish_pipe_errors(message: str, kind: type) -> None:
    s = BlobStream(spec(StreamKind.PIPE, verify=False), len(DATA))
    s.feed(DATA)
    s.finish_pipe_result(RequestError("FinishPipe", message))
    with pytest.raises(kind):
        s.check()


@pytest.mark.parametrize("size", ["10", None, 1.5, True, -2, MAX_JSON_INT + 1])
def test_invalid_reported_size(size: Any) -> None:
    with pytest.raises(ProtocolError):
        BlobStream(spec(StreamKind.RAW), size)


def test_stream_ends_close_fds_on_bad_size(pipe_fds: Any) -> None:
    a, b = pipe_fds(2)
    with pytest.raises(ProtocolError):
        StreamEnds(RawPipesReply("big", a, b), spec(StreamKind.RAW), "GetRawBlob", ())
    assert not fd_is_open(a) and not fd_is_open(b)


# --- the connection's ticket FIFO ----------------------------------------------------------


def test_replies_resolve_tickets_in_order() -> None:
    conn = Connection()
    _, first = conn.request("OpenImage", ("oci:/a:b",))
    _, second = conn.request("CloseImage", (1,))
    conn.receive(reply(success=True, value=1, pipeid=0), [], False)
    assert first.done and not second.done and first.result() == ValueReply(1)
    conn.receive(reply(success=False, error="no such image", pipeid=0), [], False)
    with pytest.raises(RequestError, match="CloseImage: no such image"):
        second.result()
    assert not conn.pending


def test_abandoned_pipe_reply_is_released(pipe_fds: Any) -> None:
    conn = Connection()
    _, ticket = conn.request("GetManifest", (1,))
    ticket.abandoned = True
    (fd,) = pipe_fds(1)
    _, follow_ups = conn.receive(reply(success=True, value="x", pipeid=9), [fd], False)
    assert not fd_is_open(fd)
    assert follow_ups == [("FinishPipe", (9,))]


def test_abandoned_open_is_closed_and_raw_pipes_released(pipe_fds: Any) -> None:
    conn = Connection()
    _, opened = conn.request("OpenImageOptional", ("oci:/a:b",))
    _, raw = conn.request("GetRawBlob", (1, "sha256:" + "0" * 64))
    opened.abandoned = raw.abandoned = True
    assert conn.receive(reply(success=True, value=4, pipeid=0), [], False)[1] == [
        ("CloseImage", (4,))
    ]
    a, b = pipe_fds(2)
    assert conn.receive(reply(success=True, value=3, pipeid=0), [a, b], False)[1] == []
    assert not fd_is_open(a) and not fd_is_open(b)


def test_unsolicited_reply_fails_the_connection(pipe_fds: Any) -> None:
    conn = Connection()
    (fd,) = pipe_fds(1)
    with pytest.raises(ProtocolError, match="no request outstanding"):
        conn.receive(reply(success=True, value=1, pipeid=3), [fd], False)
    assert not fd_is_open(fd)
    with pytest.raises(ProtocolError):
        conn.request("OpenImage", ("x:y",))


def test_protocol_error_fails_every_outstanding_ticket() -> None:
    conn = Connection()
    tickets = [conn.request("OpenImage", ("oci:/a:b",))[1] for _ in range(3)]
    with pytest.raises(ProtocolError):
        conn.receive(b"garbage", [], False)
    for t in tickets:
        with pytest.raises(ProtocolError):
            t.result()
    assert conn.head_exempt is False


def test_exempt_head() -> None:
    conn = Connection()
    conn.request("FinishPipe", (3,), exempt=True)
    assert conn.head_exempt
