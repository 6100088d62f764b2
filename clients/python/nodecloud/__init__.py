"""A Python client for the nodecloud service protocol (docs/PROTOCOL.md section 12).

An application attaches to one node's service listener, authenticates with the cluster's
service key, and then publishes and subscribes to events, implements methods and calls
methods anywhere in the cluster:

    from nodecloud import Client, CallError

    with Client.connect("127.0.0.1:7200", "star-demo", b"the-service-key") as c:
        c.subscribe("sensor.temperature")
        c.implement("py.add", lambda v, from_node: {"sum": v["a"] + v["b"]})
        c.sync()                                   # the node has taken both
        c.publish("sensor.temperature", {"celsius": 21.5})
        print(c.call("py.add", {"a": 1, "b": 2}))  # {'sum': 3}
        print(c.next_event(timeout=5))             # ('sensor.temperature', 'master', {...})

Dependencies: the standard library and ``cbor2``. Install with ``pip install ./clients/python``
from a checkout of nodecloud.

Connecting. ``connect`` raises :class:`ConnectError` when nothing answers at the address (the
node is down, or the address is wrong), with the address and the likely cause in its message,
and :class:`HandshakeError` when the node answers but refuses: ``auth_failed`` for a wrong key,
or ``not_admitted`` when the address is a node's peer port (``listen``) instead of its service
port (``service``).

Values. Events, requests and responses are any value this module can write as CBOR: None,
bools, integers, floats, text, bytes, lists, tuples and dicts (anything else goes through
``cbor2``). Floats stay floats: each is written as a float32 when that is exact and as a
float64 otherwise, never as an integer or a half-precision float. A Rust subscriber decodes
numbers by value (an ``f32`` field takes a double too), but its fast path expects a float32
for an ``f32``: ``{"celsius": 21.5}`` goes out as ``fa 41ac0000``, exactly as a Rust
publisher of ``Temperature { celsius: f32 }`` writes it. Received values are decoded by
``cbor2``: byte strings come back as ``bytes``, floats as ``float``.

Threads. ``connect`` starts one background reader thread. It answers the node's pings,
resolves calls, queues deliveries and hands requests to a small pool of handler threads, so a
slow handler never stops the reading. Every public method may be called from any thread.

Refusals. The node answers an operation it refuses (an empty topic, too many subscriptions,
a publish to a node that is not up, ...) with a ``refused`` frame and keeps the link open.
Since ``subscribe``, ``publish`` and the like are not acknowledged, a refusal arrives a little
later. If an ``on_refused`` callback was given to ``connect``, it is called (on the reader
thread) with the :class:`Refused` exception. Otherwise the refusal is kept, and the next
``subscribe``, ``unsubscribe``, ``publish``, ``implement``, ``unimplement``, ``call`` or
``sync`` raises it (the oldest first). ``sync()`` is the way to be sure: the node handles an
application's frames in order, so once it has answered the ping that ``sync`` sends, every
refusal of an earlier operation has arrived.

Deliveries. Events wait in a bounded queue (``event_queue`` entries, default 10 000) until
``next_event`` or ``events`` takes them. With ``queue_full="drop"`` (the default) an event
that arrives while the queue is full is discarded and counted in ``Client.dropped_events``:
the reader never blocks, so calls and pings keep flowing, whatever the handlers and the
application's threads are doing. With ``queue_full="block"`` the reader waits for room instead:
nothing is lost here, the node's queue toward this application fills, but replies and pings
wait behind the blocked event too. When the node's queue is full it closes the link with
``slow_consumer``, unless ``connect`` asked for ``overflow="drop_oldest"`` (the node drops the
oldest queued deliveries, and each event's ``dropped`` says how many so far) or
``overflow="wait"`` (the node delivers at this application's pace, losing nothing, and closes
it only once it read nothing for 50 ms).

Each event unpacks as ``(topic, from_node, value)`` and carries ``id`` (unique among the events
of its origin's incarnation), ``seq`` (its number in its stream: the events ``from_node``
published on ``topic`` to every node, or to this node only when ``targeted``; from 1, so a gap
is an event that did not arrive), ``targeted`` and ``dropped``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import hmac
import io
import itertools
import logging
import math
import os
import re
import socket
import ssl
import struct
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple, Union

import cbor2

__all__ = [
    "Client",
    "NodecloudError",
    "ConnectionClosed",
    "HandshakeError",
    "ConnectError",
    "CallError",
    "Refused",
    "FrameTooLarge",
]

__version__ = "0.1.0"

log = logging.getLogger("nodecloud")

# The highest protocol version offered; a node answers with the version both speak.
PROTOCOL_VERSION = 2
MIN_PROTOCOL_VERSION = 1
HANDSHAKE_FRAME_LIMIT = 1024
DEFAULT_MAX_FRAME_BYTES = 1 << 20
DEFAULT_CALL_TIMEOUT_MS = 5000
LABEL_DIALLER = b"nodecloud/1 dialler"
LABEL_ACCEPTOR = b"nodecloud/1 acceptor"
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
U64_MAX = (1 << 64) - 1

# Kinds a node may send on a service link after the handshake.
_NODE_KINDS = {"ping", "pong", "deliver", "reply", "request", "refused", "error", "bye",
               "cluster_view"}
# Kinds only a node's peer link carries: receiving one means the address is a peer port.
_PEER_KINDS = {"heartbeat", "status", "event", "peer_call", "peer_reply", "ack"}
# Kinds that exist in the protocol but a node never sends to an application.
_OTHER_KINDS = {
    "hello", "hello_ack", "auth", "welcome", "heartbeat", "status", "event", "peer_call",
    "peer_reply", "subscribe", "unsubscribe", "publish", "implement", "unimplement", "call",
    "respond", "cluster", "ack", "options", "http_backend",
}


# ---------------------------------------------------------------------------------------------
# Errors


class NodecloudError(Exception):
    """Base class of this module's errors."""


class ConnectionClosed(NodecloudError, ConnectionError):
    """The link is closed. ``code`` is the ``error`` code that closed it (from either side),
    ``"bye"`` after an orderly close by the node, ``"closed"`` after ``Client.close()``, or
    ``"io"`` when the connection broke."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class HandshakeError(ConnectionClosed):
    """``connect`` reached something at ``address`` but the handshake failed: ``code`` is
    ``auth_failed``, ``version``, ``cluster``, ``bad_name``, ``not_admitted`` (the address is
    a peer port, not a service port), ``timeout``, ``io``, ... (docs/PROTOCOL.md section 8)."""

    def __init__(self, code: str, message: str, address: Optional[str] = None):
        super().__init__(code, message)
        self.address = address
        if address is not None:
            self.args = (f"cannot attach to {address}: {code}: {message}",)


class ConnectError(NodecloudError, ConnectionError):
    """``connect`` could not open a connection: nothing accepts at ``address``, it timed out,
    the name does not resolve, or a Unix socket is missing or not ours. ``address`` is the
    address as given, ``node`` the node name expected there (None if not given), ``reason`` a
    short description with a hint, and ``__cause__`` the underlying ``OSError``."""

    def __init__(self, address: str, node: Optional[str], reason: str):
        where = address if node is None else f"{address} (node {node})"
        super().__init__(f"cannot connect to {where}: {reason}")
        self.address = address
        self.node = node
        self.reason = reason


class CallError(NodecloudError):
    """A call ended with ``{"error": {code, message}}``: ``no_implementer``, ``timeout``,
    ``target_down``, ``unknown_node``, ``remote_error``, ``bad_payload``,
    ``implementer_gone``, ``busy`` or ``stopped``."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Refused(NodecloudError):
    """The node refused an operation (a ``refused`` frame); the link stays open. ``op`` is the
    refused message kind (``subscribe``, ``publish``, ...)."""

    def __init__(self, op: str, code: str, message: str):
        super().__init__(f"{op} refused: {code}: {message}")
        self.op = op
        self.code = code
        self.message = message


class FrameTooLarge(NodecloudError, ValueError):
    """A message would not fit in a frame (``max_frame_bytes``); nothing was sent."""


class Event(tuple):
    """A delivered event: unpacks as ``(topic, from_node, value)``; ``id``, ``seq``,
    ``targeted`` and ``dropped`` are attributes (see the module docs)."""

    id: int
    seq: int
    targeted: bool
    dropped: int

    def __new__(cls, topic: str, from_node: str, value: Any, id: int = 0, seq: int = 0,
                targeted: bool = False, dropped: int = 0) -> "Event":
        ev = super().__new__(cls, (topic, from_node, value))
        ev.id, ev.seq, ev.targeted, ev.dropped = id, seq, targeted, dropped
        return ev


class _Malformed(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# CBOR and framing helpers


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    if n < 0x100:
        return bytes([major << 5 | 24, n])
    if n < 0x10000:
        return bytes([major << 5 | 25]) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes([major << 5 | 26]) + n.to_bytes(4, "big")
    return bytes([major << 5 | 27]) + n.to_bytes(8, "big")


def _float(v: float) -> bytes:
    # float32 when that is exact, else float64; never an integer, never half precision.
    # {"celsius": 21.5} is then fa 41ac0000, as a Rust `Temperature { celsius: f32 }` is
    # written, which Rust decoders take on their fast path.
    try:
        single = struct.pack(">f", v)
    except OverflowError:
        return b"\xfb" + struct.pack(">d", v)
    back = struct.unpack(">f", single)[0]
    if back == v or (math.isnan(v) and math.isnan(back)):
        return b"\xfa" + single
    return b"\xfb" + struct.pack(">d", v)


def _encode(value: Any, out: bytearray) -> None:
    if value is None:
        out += b"\xf6"
    elif value is True:
        out += b"\xf5"
    elif value is False:
        out += b"\xf4"
    elif isinstance(value, int):
        if 0 <= value <= U64_MAX:
            out += _head(0, value)
        elif -(1 << 64) <= value < 0:
            out += _head(1, -1 - value)
        else:  # a bignum: cbor2 writes it as a tag (2 or 3)
            out += cbor2.dumps(value)
    elif isinstance(value, float):
        out += _float(value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        out += _head(3, len(data))
        out += data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out += _head(2, len(data))
        out += data
    elif isinstance(value, (list, tuple)):
        out += _head(4, len(value))
        for item in value:
            _encode(item, out)
    elif isinstance(value, dict):
        out += _head(5, len(value))
        for k, v in value.items():
            _encode(k, out)
            _encode(v, out)
    else:  # anything else cbor2 knows (datetimes, decimals, ...), with its tags
        out += cbor2.dumps(value)


def _dumps(value: Any) -> bytes:
    """One CBOR item with definite lengths and integers in their shortest form. Floats stay
    floats: float32 when exact, else float64."""
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _loads_one(data: bytes) -> Any:
    """Exactly one CBOR item, with nothing after it."""
    if not data:
        raise _Malformed("empty CBOR item")
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except Exception as exc:  # cbor2 raises several types
        raise _Malformed(f"not a CBOR item: {exc}") from None
    if fp.tell() != len(data):
        raise _Malformed(f"{len(data) - fp.tell()} bytes after the CBOR item")
    return value


def proof(secret: bytes, label: bytes, cluster: str, dialler: str, acceptor: str,
          inc_d: bytes, inc_a: bytes, nonce_d: bytes, nonce_a: bytes) -> bytes:
    """HMAC-SHA256 over the handshake transcript (docs/PROTOCOL.md section 6.3)."""
    t = b"".join(part + b"\0" for part in
                 (label, cluster.encode(), dialler.encode(), acceptor.encode()))
    t += inc_d + inc_a + nonce_d + nonce_a
    return hmac.new(secret, t, hashlib.sha256).digest()


def _is_uint(v: Any, bits: int = 64) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << bits)


def _field(fields: dict, name: str, check: Callable[[Any], bool], what: str,
           optional: bool = False) -> Any:
    if name not in fields or (optional and fields[name] is None):
        if optional:
            return None
        raise _Malformed(f"missing field {name!r}")
    v = fields[name]
    if not check(v):
        raise _Malformed(f"field {name!r} is not {what}")
    return v


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _bytes(v: Any) -> bool:
    return isinstance(v, bytes)


def _bytes_n(n: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, bytes) and len(v) == n


def _outcome(v: Any) -> bool:
    if not isinstance(v, dict) or len(v) != 1:
        return False
    ((k, val),) = v.items()
    if k == "ok":
        return isinstance(val, bytes)
    if k == "error":
        return (isinstance(val, dict) and isinstance(val.get("code"), str)
                and isinstance(val.get("message"), str))
    return False


# Why an address did not accept a connection, by errno class: what to check next.
_SERVICE_PORT_HINT = "is the node running, and is this its service port?"
_SERVICE_SOCKET_HINT = "is the node running, and is this its service_socket path?"


def _connect_error(address: str, node: Optional[str], unix: bool, exc: OSError,
                   timeout: float) -> ConnectError:
    """A :class:`ConnectError` naming the address, the node and the likely cause."""
    hint = _SERVICE_SOCKET_HINT if unix else _SERVICE_PORT_HINT
    if isinstance(exc, ConnectionRefusedError):
        reason = f"connection refused ({hint})"
    elif isinstance(exc, FileNotFoundError):
        reason = f"no such socket ({hint})"
    elif isinstance(exc, PermissionError):
        reason = "permission denied (the node creates its socket with mode 0600: run as its user)"
    elif isinstance(exc, socket.timeout):
        reason = f"no answer within {timeout:g} s (is the address reachable from here?)"
    elif isinstance(exc, socket.gaierror):
        reason = f"cannot resolve the host name: {exc.strerror or exc}"
    else:
        reason = exc.strerror or str(exc) or type(exc).__name__
    return ConnectError(address, node, reason)


def _parse_address(address: str) -> Tuple[int, Any]:
    if address.startswith("/") or address.startswith("."):
        if not hasattr(socket, "AF_UNIX"):
            raise ValueError("Unix sockets are not available on this platform")
        return socket.AF_UNIX, address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {address!r} is neither host:port nor a socket path")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return socket.AF_UNSPEC, (host, int(port))


class _Conn:
    """One socket with both seq counters and the frame limit. Writes are serialised."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.limit = HANDSHAKE_FRAME_LIMIT
        self.send_seq = 0
        self.recv_seq = 0
        self.write_lock = threading.Lock()
        self.deferred_pong: Optional[int] = None
        self.welcome: dict = {}

    def _read_exact(self, n: int, inside_frame: bool) -> Optional[bytes]:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                if not buf and not inside_frame:
                    return None  # a clean close between frames
                raise _Malformed("the stream ended in the middle of a frame")
            buf += chunk
        return bytes(buf)

    def read_frame(self) -> Optional[Tuple[str, dict]]:
        """The next message as ``(kind, fields)``; None at a clean close between frames.
        Raises _Malformed, _TooLarge, _OutOfSeq, OSError."""
        prefix = self._read_exact(4, inside_frame=False)
        if prefix is None:
            return None
        (length,) = struct.unpack(">I", prefix)
        if length == 0:
            raise _Malformed("zero-length frame")
        if length > self.limit:  # checked before a byte of the body is read
            raise _TooLarge(f"frame of {length} bytes over the limit of {self.limit}")
        body = self._read_exact(length, inside_frame=True)
        item = _loads_one(body)
        if not isinstance(item, list) or len(item) != 2:
            raise _Malformed("frame body is not [seq, message]")
        seq, message = item
        if not _is_uint(seq):
            raise _Malformed("seq is not an unsigned integer")
        if seq != self.recv_seq:
            raise _OutOfSeq(f"expected seq {self.recv_seq}, got {seq}")
        self.recv_seq += 1
        if not isinstance(message, dict) or len(message) != 1:
            raise _Malformed("message is not a map with one entry")
        ((kind, fields),) = message.items()
        if not isinstance(kind, str) or not isinstance(fields, dict):
            raise _Malformed("message is not {kind: {fields}}")
        return kind, fields

    def _write(self, kind: str, fields: dict) -> None:
        """Encode and send one frame; the caller holds write_lock. Raises FrameTooLarge."""
        body = _dumps([self.send_seq, {kind: fields}])
        if len(body) > self.limit:
            raise FrameTooLarge(
                f"{kind} frame of {len(body)} bytes over the limit of {self.limit}")
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        self.send_seq += 1

    def send_many(self, kind: str, many: Iterable[dict]) -> None:
        """Encode one frame per ``fields`` of ``many`` and send them all with one write. Every
        frame is checked against the limit before any is sent (FrameTooLarge: none sent)."""
        if not self.write_lock.acquire():
            raise TimeoutError("the connection is busy")
        try:
            out = bytearray()
            seq = self.send_seq
            for fields in many:
                body = _dumps([seq, {kind: fields}])
                if len(body) > self.limit:
                    raise FrameTooLarge(
                        f"{kind} frame of {len(body)} bytes over the limit of {self.limit}")
                out += struct.pack(">I", len(body))
                out += body
                seq += 1
            self.sock.sendall(out)
            self.send_seq = seq
        except BaseException:
            self.write_lock.release()
            raise
        self._release()

    def _release(self) -> None:
        """Release write_lock, sending a pong that was deferred while it was held."""
        while True:
            self.write_lock.release()
            if self.deferred_pong is None or not self.write_lock.acquire(blocking=False):
                return
            n, self.deferred_pong = self.deferred_pong, None
            if n is not None:
                try:
                    self._write("pong", {"n": n})
                except BaseException:
                    self.write_lock.release()
                    raise

    def send(self, kind: str, fields: dict, lock_timeout: float = -1) -> None:
        if not self.write_lock.acquire(timeout=lock_timeout):
            raise TimeoutError("the connection is busy")
        try:
            self._write(kind, fields)
        except BaseException:
            self.write_lock.release()
            raise
        self._release()

    def send_pong(self, n: int) -> None:
        """Answer a ping without ever waiting for the write lock: if another thread is
        sending (perhaps blocked by backpressure), it sends the pong when it is done."""
        self.deferred_pong = n
        if self.write_lock.acquire(blocking=False):
            n, self.deferred_pong = self.deferred_pong, None
            try:
                if n is not None:
                    self._write("pong", {"n": n})
            except BaseException:
                self.write_lock.release()
                raise
            self._release()


class _TooLarge(Exception):
    pass


class _OutOfSeq(Exception):
    pass


class _Pending:
    """A call waiting for its reply."""

    __slots__ = ("done", "outcome", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: Any = None
        self.error: Optional[BaseException] = None


# ---------------------------------------------------------------------------------------------
# The client

Handler = Callable[[Any, str], Any]


class Client:
    """One authenticated service link to a node. Create it with :meth:`connect`."""

    def __init__(self, conn: _Conn, node: str, name: str, *, max_frame_bytes: int,
                 call_timeout_ms: int, event_queue: int, queue_full: str,
                 handler_threads: int, on_refused: Optional[Callable[[Refused], None]],
                 io_timeout: float):
        self._conn = conn
        #: The name of the node this client is attached to (from ``hello_ack``).
        self.node = node
        #: This application's name.
        self.name = name
        self._max_frame_bytes = max_frame_bytes
        self._call_timeout_ms = call_timeout_ms
        self._io_timeout = io_timeout
        self._lock = threading.Lock()
        self._call_ids = itertools.count(0)
        self._pending: dict = {}
        self._handlers: dict = {}
        self._refusals: collections.deque = collections.deque()
        self._on_refused = on_refused
        self._ping_n = itertools.count(1)
        self._syncs: dict = {}
        # `cluster` requests by id; the node answers in order, so a refusal is the oldest's.
        self._views: dict = {}
        self._events: collections.deque = collections.deque()
        self._event_cap = max(1, event_queue)
        self._event_cond = threading.Condition(self._lock)
        if queue_full not in ("drop", "block"):
            raise ValueError('queue_full must be "drop" or "block"')
        self._queue_full = queue_full
        #: Events discarded because the queue was full (``queue_full="drop"``).
        self.dropped_events = 0
        self._closed: Optional[ConnectionClosed] = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, handler_threads), thread_name_prefix="nodecloud-handler")
        self._reader = threading.Thread(target=self._read_loop, name="nodecloud-reader",
                                        daemon=True)
        self._reader.start()

    # -- connecting ----------------------------------------------------------------------------

    @classmethod
    def connect(cls, address: str, cluster: str, key: Union[bytes, str], name: str = "py-app",
                timeout: float = 5.0, *, node: Optional[str] = None,
                max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                call_timeout_ms: int = DEFAULT_CALL_TIMEOUT_MS,
                event_queue: int = 10_000, queue_full: str = "drop",
                handler_threads: int = 8,
                on_refused: Optional[Callable[[Refused], None]] = None,
                overflow: str = "close",
                tls_ca: Optional[str] = None,
                ssl_context: Optional["ssl.SSLContext"] = None) -> "Client":
        """Connect to a node's service listener and run the handshake.

        ``address`` is ``"host:port"`` (TCP) or a Unix socket path starting with ``/`` or
        ``.``. ``key`` is the cluster's service key (``service_key``; the cluster ``secret``
        when none is configured), as bytes or as text (encoded as UTF-8). ``name`` is this
        application's name: 1 to 64 of ``A-Z a-z 0-9 . _ -``. ``timeout`` bounds the
        connection and the whole handshake. ``node``, if given, is the node name expected in
        ``hello_ack``. ``max_frame_bytes`` must be the cluster's value (default 1 MiB).
        ``call_timeout_ms`` is the timeout the node applies to a call that gives none.
        ``overflow`` is what the node does when its queue toward this application is full:
        ``"close"`` (``slow_consumer``), ``"drop_oldest"`` or ``"wait"``.

        TLS (a node with ``[cluster.tls]``): ``tls_ca`` is the PEM file of the cluster's CA;
        the node's certificate is verified against it and the host of ``address``. Or pass
        an ``ssl_context`` of your own (``ssl.create_default_context(cafile=...)``). No
        client certificate is needed: the service key authenticates the application. A
        Unix socket never speaks TLS.

        Raises :class:`ConnectError` if nothing accepts the connection (its message names the
        address and the likely cause), :class:`HandshakeError` (with the ``error`` code) if
        the node or this client refuses the handshake (``not_admitted``: the address is a
        peer port, not a service port), and ``ValueError`` for an invalid name or address.
        Both errors are ``ConnectionError`` subclasses.
        """
        if not NAME_RE.match(name):
            raise ValueError(f"invalid application name {name!r}: 1-64 of A-Z a-z 0-9 . _ -")
        if not NAME_RE.match(cluster):
            raise ValueError(f"invalid cluster name {cluster!r}")
        if overflow not in ("close", "drop_oldest", "wait"):
            raise ValueError('overflow must be "close", "drop_oldest" or "wait"')
        secret = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        family, target = _parse_address(address)
        deadline = time.monotonic() + timeout
        unix = family == socket.AF_UNIX
        if tls_ca is not None and ssl_context is None:
            ssl_context = ssl.create_default_context(cafile=tls_ca)
        if ssl_context is not None and unix:
            raise ValueError("TLS is for TCP addresses; a Unix socket never speaks TLS")
        try:
            if unix:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(target)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(target, timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if ssl_context is not None:
                    try:
                        sock = ssl_context.wrap_socket(sock, server_hostname=target[0])
                    except BaseException:
                        sock.close()
                        raise
        except ssl.SSLError as exc:
            raise HandshakeError("tls", f"TLS with {address} failed: {exc}", address) from exc
        except OSError as exc:
            raise _connect_error(address, node, unix, exc, timeout) from exc
        conn = _Conn(sock)
        try:
            node_name = _handshake(conn, secret, cluster, name, node, deadline, address)
        except HandshakeError:
            sock.close()
            raise
        except OSError as exc:  # reset or broken pipe: not a node, or one that went away
            sock.close()
            raise HandshakeError("io", f"the connection broke during the handshake: {exc}",
                                 address) from exc
        except BaseException:
            sock.close()
            raise
        # The dialler raises its limit on `welcome`, to what the node states if it does.
        stated = conn.welcome.get("max_frame_bytes")
        conn.limit = stated if _is_uint(stated, 32) else max_frame_bytes
        sock.settimeout(None)
        if overflow != "close":
            conn.send("options", {"overflow": overflow})
        return cls(conn, node_name, name, max_frame_bytes=max_frame_bytes,
                   call_timeout_ms=call_timeout_ms, event_queue=event_queue,
                   queue_full=queue_full, handler_threads=handler_threads,
                   on_refused=on_refused, io_timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- operations ----------------------------------------------------------------------------

    def subscribe(self, topic: str) -> None:
        """Deliver events of ``topic`` (or a pattern: ``sensor.*``, ``sensor.>``) to this client."""
        self._op("subscribe", {"topic": topic})

    def unsubscribe(self, topic: str) -> None:
        self._op("unsubscribe", {"topic": topic})

    def publish(self, topic: str, value: Any, target: Optional[str] = None) -> None:
        """Publish ``value`` (anything cbor2 encodes) to every node, or to node ``target``.
        Subscribers everywhere receive it, this client included if it subscribed. Blocks
        while the node applies backpressure."""
        self._op("publish", {"topic": topic, "target": target, "payload": _dumps(value)})

    def publish_batch(self, topic: str, values: Iterable[Any],
                      target: Optional[str] = None) -> None:
        """Publish every value of ``values`` on ``topic``, in order. On the wire this is one
        ``publish`` frame per value, exactly as ``publish`` sends them, written with one
        ``sendall``: it saves the per-call locking and system calls, nothing else. If any
        value would not fit in a frame, FrameTooLarge is raised and none is sent."""
        self._raise_refusal()
        self._check_open_locked()
        frames = [{"topic": topic, "target": target, "payload": _dumps(v)} for v in values]
        try:
            self._conn.send_many("publish", frames)
        except FrameTooLarge:
            raise
        except OSError as exc:
            closed = ConnectionClosed("io", f"send failed: {exc}")
            self._shutdown(closed)
            raise closed from exc

    def implement(self, method: str, handler: Handler) -> None:
        """Serve ``method``: ``handler(value, from_node)`` runs on a handler thread for each
        request and returns the response value. If it raises, the caller gets
        ``remote_error`` with the message ``"handler_error: <str(exc)>"``."""
        with self._lock:
            self._handlers[method] = handler
        try:
            self._op("implement", {"method": method})
        except BaseException:
            with self._lock:
                if self._handlers.get(method) is handler:
                    del self._handlers[method]
            raise

    def http_backend(self, address: str) -> None:
        """Advertise this application's HTTP server at ``address`` (``HOST:PORT``) as an HTTP
        backend of its node until the application detaches: proxies then forward requests to
        it (docs/PROTOCOL.md §12.4.1)."""
        self._op("http_backend", {"address": address})

    def unimplement(self, method: str) -> None:
        self._op("unimplement", {"method": method})
        with self._lock:
            self._handlers.pop(method, None)

    def call(self, method: str, value: Any, target: Optional[str] = None,
             timeout_ms: Optional[int] = None) -> Any:
        """Call ``method`` on any node that implements it (the least loaded), or on node
        ``target``, and return the decoded response. Raises :class:`CallError` if the call
        failed, :class:`ConnectionClosed` if the link closes first."""
        self._raise_refusal()
        pending = _Pending()
        with self._lock:
            self._check_open()
            call_id = next(self._call_ids)
            self._pending[call_id] = pending
        fields = {"id": call_id, "method": method, "target": target, "timeout_ms": timeout_ms,
                  "payload": _dumps(value)}
        try:
            self._send("call", fields)
        except BaseException:
            with self._lock:
                self._pending.pop(call_id, None)
            raise
        # The node answers every call exactly once, by the call's timeout; the margin only
        # guards against a node that breaks that promise.
        wait_ms = self._call_timeout_ms if timeout_ms is None else timeout_ms
        if not pending.done.wait(wait_ms / 1000.0 + self._io_timeout + 5.0):
            with self._lock:
                self._pending.pop(call_id, None)
            raise CallError("timeout", f"no reply from node {self.node} for call {call_id}")
        if pending.error is not None:
            raise pending.error
        return pending.outcome

    def sync(self, timeout: Optional[float] = None) -> None:
        """Wait until the node has handled every frame sent so far (a ping round trip), then
        raise the oldest refusal not yet reported, if any."""
        self._check_open_locked()
        n = next(self._ping_n)
        done = threading.Event()
        with self._lock:
            self._syncs[n] = done
        try:
            self._send("ping", {"n": n})
            if not done.wait(self._io_timeout if timeout is None else timeout):
                raise TimeoutError(f"node {self.node} did not answer ping {n}")
        finally:
            with self._lock:
                self._syncs.pop(n, None)
        self._check_open_locked()
        self._raise_refusal()

    def cluster(self, timeout: Optional[float] = None) -> dict:
        """The cluster as the attached node sees it: ``{"cluster", "topology", "node",
        "members"}``, each member ``{"name", "role", "state" ("up" or "down"), "incarnation"
        (a uuid string, None while down), "stats" (a dict, None while down), "links",
        "methods"}``. Raises :class:`Refused` if the node refuses (a member list too large for
        one frame)."""
        pending = _Pending()
        with self._lock:
            self._check_open()
            view_id = next(self._call_ids)
            self._views[view_id] = pending
        try:
            self._send("cluster", {"id": view_id})
            if not pending.done.wait(self._io_timeout if timeout is None else timeout):
                raise TimeoutError(f"node {self.node} did not answer cluster request {view_id}")
        finally:
            with self._lock:
                self._views.pop(view_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.outcome

    def next_event(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next delivered event as ``(topic, from_node, value)``, or None after
        ``timeout`` seconds (None: wait for ever). Raises :class:`ConnectionClosed` once the
        link is closed and every queued event has been taken."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._event_cond:
            while not self._events:
                if self._closed is not None:
                    raise self._closed
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._event_cond.wait(remaining)
            event = self._events.popleft()
            self._event_cond.notify_all()  # room for a blocked reader
            return event

    def events(self) -> Iterator[Event]:
        """Every delivered event, until the link closes."""
        while True:
            try:
                event = self.next_event()
            except ConnectionClosed:
                return
            if event is not None:
                yield event

    @property
    def closed(self) -> Optional[ConnectionClosed]:
        """None while the link is open; afterwards, why it closed."""
        return self._closed

    def close(self, reason: str = "closing") -> None:
        """Send ``bye`` and close. Pending calls fail with :class:`ConnectionClosed`."""
        if self._closed is None:
            try:
                self._send("bye", {"reason": reason})
            except (OSError, NodecloudError):
                pass
        self._shutdown(ConnectionClosed("closed", "closed by the application"))
        if threading.current_thread() is not self._reader:
            self._reader.join(self._io_timeout)
        self._pool.shutdown(wait=False)

    # -- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    def _check_open_locked(self) -> None:
        with self._lock:
            self._check_open()

    def _raise_refusal(self) -> None:
        with self._lock:
            if self._refusals:
                raise self._refusals.popleft()

    def _op(self, kind: str, fields: dict) -> None:
        self._raise_refusal()
        self._send(kind, fields)

    def _send(self, kind: str, fields: dict) -> None:
        self._check_open_locked()
        try:
            self._conn.send(kind, fields)
        except FrameTooLarge:
            raise
        except OSError as exc:
            closed = ConnectionClosed("io", f"send failed: {exc}")
            self._shutdown(closed)
            raise closed from exc

    def _fail(self, code: str, message: str) -> None:
        """Refuse with an `error` frame (best effort, 200 ms) and close."""
        try:
            self._conn.sock.settimeout(0.2)
            self._conn.send("error", {"code": code, "message": message}, lock_timeout=0.2)
        except (OSError, NodecloudError):
            pass
        self._shutdown(ConnectionClosed(code, message))

    def _shutdown(self, why: ConnectionClosed) -> None:
        with self._lock:
            if self._closed is not None:
                return
            self._closed = why
            pending, self._pending = self._pending, {}
            syncs, self._syncs = self._syncs, {}
            self._event_cond.notify_all()
        for p in pending.values():
            p.error = why
            p.done.set()
        for done in syncs.values():
            done.set()
        try:
            self._conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._conn.sock.close()
        except OSError:
            pass

    def _read_loop(self) -> None:
        conn = self._conn
        while self._closed is None:
            try:
                frame = conn.read_frame()
            except _TooLarge as exc:
                return self._fail("frame_too_large", str(exc))
            except _OutOfSeq as exc:
                return self._fail("out_of_sequence", str(exc))
            except _Malformed as exc:
                return self._fail("malformed_frame", str(exc))
            except OSError as exc:
                return self._shutdown(ConnectionClosed("io", f"connection lost: {exc}"))
            if frame is None:
                return self._shutdown(ConnectionClosed("io", "the node closed the connection"))
            try:
                self._dispatch(*frame)
            except _Malformed as exc:
                return self._fail("malformed_frame", str(exc))
            except ConnectionClosed:
                return
            except OSError as exc:
                return self._shutdown(ConnectionClosed("io", f"connection lost: {exc}"))

    def _dispatch(self, kind: str, f: dict) -> None:
        if kind == "ping":
            n = _field(f, "n", _is_uint, "a u64")
            self._conn.send_pong(n)
        elif kind == "pong":
            n = _field(f, "n", _is_uint, "a u64")
            with self._lock:
                done = self._syncs.get(n)
            if done is not None:
                done.set()
        elif kind == "deliver":
            topic = _field(f, "topic", _text, "text")
            from_node = _field(f, "from", _text, "text")
            payload = _field(f, "payload", _bytes, "bytes")
            # Absent from nodes that predate them.
            event_id = f.get("id", 0)
            seq = f.get("seq", 0)
            dropped = f.get("dropped", 0)
            targeted = f.get("targeted", False)
            if not (_is_uint(event_id) and _is_uint(seq) and _is_uint(dropped)
                    and isinstance(targeted, bool)):
                raise _Malformed("deliver: id, seq and dropped must be u64, targeted a bool")
            try:
                value = _loads_one(payload)
            except _Malformed as exc:
                log.warning("dropping an event of %r from %s: %s", topic, from_node, exc)
                return
            self._queue_event(Event(topic, from_node, value, event_id, seq, targeted, dropped))
        elif kind == "reply":
            call_id = _field(f, "id", _is_uint, "a u64")
            outcome = _field(f, "outcome", _outcome, "an outcome")
            with self._lock:
                pending = self._pending.pop(call_id, None)
            if pending is None:
                log.warning("reply to call %d, which is not pending", call_id)
                return
            ((k, v),) = outcome.items()
            if k == "ok":
                try:
                    pending.outcome = _loads_one(v)
                except _Malformed as exc:
                    pending.error = CallError("bad_payload", f"response: {exc}")
            else:
                pending.error = CallError(v["code"], v["message"])
            pending.done.set()
        elif kind == "request":
            req_id = _field(f, "id", _is_uint, "a u64")
            method = _field(f, "method", _text, "text")
            from_node = _field(f, "from", _text, "text")
            payload = _field(f, "payload", _bytes, "bytes")
            try:
                self._pool.submit(self._serve, req_id, method, from_node, payload)
            except RuntimeError:  # the pool is shut down: we are closing
                pass
        elif kind == "cluster_view":
            view_id = _field(f, "id", _is_uint, "a u64")
            with self._lock:
                pending = self._views.pop(view_id, None)
            if pending is None:
                return
            members = _field(f, "members", lambda v: isinstance(v, list), "an array")
            for m in members:
                inc = m.get("incarnation") if isinstance(m, dict) else None
                if isinstance(inc, bytes) and len(inc) == 16:
                    m["incarnation"] = str(uuid.UUID(bytes=inc))
            pending.outcome = {k: f.get(k) for k in ("cluster", "topology", "node")}
            pending.outcome["members"] = members
            pending.done.set()
        elif kind == "refused":
            refusal = Refused(_field(f, "op", _text, "text"), _field(f, "code", _text, "text"),
                              _field(f, "message", _text, "text"))
            if refusal.op == "cluster":
                with self._lock:
                    oldest = min(self._views, default=None)
                    pending = self._views.pop(oldest, None) if oldest is not None else None
                if pending is not None:
                    pending.error = refusal
                    pending.done.set()
                return
            if self._on_refused is not None:
                try:
                    self._on_refused(refusal)
                except Exception:
                    log.exception("on_refused callback failed")
            else:
                with self._lock:
                    self._refusals.append(refusal)
        elif kind == "error":
            code = _field(f, "code", _text, "text")
            message = _field(f, "message", _text, "text")
            self._shutdown(ConnectionClosed(code, message))
            raise self._closed  # type: ignore[misc]
        elif kind == "bye":
            reason = _field(f, "reason", _text, "text")
            self._shutdown(ConnectionClosed("bye", reason))
            raise self._closed  # type: ignore[misc]
        elif kind in _PEER_KINDS:
            # A peer listener that admitted this application under a node's name.
            self._fail("unexpected_message", f"{kind} on a service link, from the node: this "
                       "is a peer port; use the node's service port")
            raise self._closed  # type: ignore[misc]
        elif kind in _OTHER_KINDS:
            self._fail("unexpected_message", f"{kind} on a service link, from the node")
            raise self._closed  # type: ignore[misc]
        else:
            # A later version's message kind: ignored (docs/PROTOCOL.md section 4).
            log.debug("ignoring a message of unknown kind %r", kind)

    def _queue_event(self, event: Event) -> None:
        with self._event_cond:
            while len(self._events) >= self._event_cap:
                if self._queue_full == "drop":
                    self.dropped_events += 1
                    if self.dropped_events == 1 or self.dropped_events % 1000 == 0:
                        log.warning("event queue full: %d events dropped", self.dropped_events)
                    return
                if self._closed is not None:
                    return
                self._event_cond.wait()
            self._events.append(event)
            self._event_cond.notify_all()

    def _serve(self, req_id: int, method: str, from_node: str, payload: bytes) -> None:
        with self._lock:
            handler = self._handlers.get(method)
        if handler is None:
            outcome = {"error": {"code": "no_implementer",
                                 "message": f"{self.name} does not implement {method}"}}
        else:
            try:
                value = _loads_one(payload)
            except _Malformed as exc:
                outcome = {"error": {"code": "bad_payload", "message": f"request: {exc}"}}
            else:
                try:
                    outcome = {"ok": _dumps(handler(value, from_node))}
                except Exception as exc:  # the handler's failure goes back to the caller
                    outcome = {"error": {"code": "handler_error", "message": str(exc)}}
        try:
            try:
                self._send("respond", {"id": req_id, "outcome": outcome})
            except FrameTooLarge as exc:
                self._send("respond", {"id": req_id, "outcome": {
                    "error": {"code": "too_large", "message": str(exc)}}})
        except (ConnectionClosed, OSError):
            pass


def _handshake(conn: _Conn, secret: bytes, cluster: str, name: str,
               expected_node: Optional[str], deadline: float, address: str) -> str:
    """The dialler's side of docs/PROTOCOL.md section 6; returns the node's name. Every
    :class:`HandshakeError` it raises names ``address``."""
    inc_d = uuid.uuid4().bytes
    nonce_d = os.urandom(32)

    def refuse(code: str, message: str) -> HandshakeError:
        try:
            conn.sock.settimeout(0.2)
            conn.send("error", {"code": code, "message": message})
        except (OSError, NodecloudError):
            pass
        return HandshakeError(code, message, address)

    def read(expected: str) -> dict:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise refuse("timeout", "the handshake did not complete in time")
            conn.sock.settimeout(remaining)
            try:
                frame = conn.read_frame()
            except socket.timeout:
                raise refuse("timeout", "the handshake did not complete in time") from None
            except _TooLarge as exc:
                raise refuse("frame_too_large", str(exc)) from None
            except _OutOfSeq as exc:
                raise refuse("out_of_sequence", str(exc)) from None
            except _Malformed as exc:
                raise refuse("malformed_frame", str(exc)) from None
            if frame is None:
                raise HandshakeError("io", f"the node closed the connection before {expected}",
                                     address)
            if frame[0] in _NODE_KINDS or frame[0] in _OTHER_KINDS:
                break
            # A later version's message kind: ignored, during the handshake too.
        kind, fields = frame
        if kind == "error":
            code = fields.get("code")
            code = code if isinstance(code, str) else "error"
            message = fields.get("message")
            message = message if isinstance(message, str) else ""
            if code == "not_admitted":
                # A service listener admits any application (section 12.2); only a peer
                # listener checks admission, so this is the node's `listen` address.
                message = (f"{message}: this is a peer port; use the node's service port"
                           if message else "this is a peer port; use the node's service port")
            raise HandshakeError(code, message, address)
        if kind != expected:
            raise refuse("unexpected_message", f"expected {expected}, got {kind}")
        return fields

    conn.send("hello", {"version": PROTOCOL_VERSION, "cluster": cluster, "node": name,
                        "incarnation": inc_d, "nonce": nonce_d})
    ack = read("hello_ack")
    try:
        version = _field(ack, "version", lambda v: _is_uint(v, 32), "a u32")
        their_cluster = _field(ack, "cluster", _text, "text")
        node = _field(ack, "node", _text, "text")
        inc_a = _field(ack, "incarnation", _bytes_n(16), "a 16-byte uuid")
        nonce_a = _field(ack, "nonce", _bytes_n(32), "32 bytes")
        proof_a = _field(ack, "proof", _bytes_n(32), "32 bytes")
    except _Malformed as exc:
        raise refuse("malformed_frame", str(exc)) from None
    if not MIN_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION:
        raise refuse("version", f"protocol version {version} is not supported "
                                f"({MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION} are)")
    if their_cluster != cluster:
        raise refuse("cluster", f"the node is in cluster {their_cluster!r}, not {cluster!r}")
    if not NAME_RE.match(node):
        raise refuse("bad_name", f"invalid node name {node!r}")
    if expected_node is not None and node != expected_node:
        raise refuse("bad_name", f"expected node {expected_node!r}, reached {node!r}")
    expected = proof(secret, LABEL_ACCEPTOR, cluster, name, node, inc_d, inc_a, nonce_d,
                     nonce_a)
    if not hmac.compare_digest(expected, proof_a):
        raise refuse("auth_failed", "the node's proof did not verify: wrong service key")
    conn.send("auth", {"proof": proof(secret, LABEL_DIALLER, cluster, name, node, inc_d,
                                      inc_a, nonce_d, nonce_a)})
    # Version 2 states the node's limits; version 1 sends the empty map.
    conn.welcome = read("welcome")
    return node
