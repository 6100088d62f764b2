#!/usr/bin/env python3
"""Tests of the Python client against a real node.

Each test class starts one node (the ``nodecloud`` binary: ``$NODECLOUD_BIN``, by default
``target/debug/nodecloud``) from a temporary configuration, hands it its listeners bound here
on port 0 (socket activation: no port is ever free for another test to take between), and
attaches clients to it.

It imports the ``nodecloud`` package the way Python finds it: run as a script it finds the
package beside it, unless ``PYTHONSAFEPATH=1`` (or ``python3 -P``) makes it use the
installed one, as ``cargo test`` does with its own environment.

    NODECLOUD_BIN=target/debug/nodecloud python3 clients/python/test_client.py
"""

import json
import os
import fcntl
import queue
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import nodecloud as nodecloud_client
from nodecloud import (
    CallError, Client, ConnectError, ConnectionClosed, FrameTooLarge, HandshakeError, Refused,
)

CLUSTER = "py-test"
SECRET = "py-test-secret-0123456789abcdef"
SERVICE_KEY = "py-test-service-key-0123456789"
NODE = "n1"
STARTUP_TIMEOUT = 20.0  # seconds for the node to open its service port
WAIT = 5.0  # seconds for anything the node should do at once


def listener():
    """A loopback TCP listener on a port the system picks."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s


class ClosedPort:
    """A loopback port that refuses connections for as long as this object lives: bound, so
    nothing else can take it, and never listening."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self):
        self.sock.close()


def inherit(*socks):
    """A preexec_fn giving the child ``socks`` as fds 3, 4, ... (the systemd protocol)."""
    fds = [s.fileno() for s in socks]

    def hand_over():
        # Out of the way first, so that placing one cannot overwrite another.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i)
            os.close(fd)
    return hand_over


def wait_started(node, timeout):
    """Poll the node's log until it has started, exited, or the timeout passes."""
    deadline = time.monotonic() + timeout
    while "node started" not in node.logs():
        if node.proc.poll() is not None:
            raise RuntimeError(f"the node exited with status {node.proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the node did not start within {timeout} s")
        # Polling a log file: there is no event to await.
        time.sleep(0.05)


class Node:
    """One nodecloud process with a service listener on 127.0.0.1."""

    def __init__(self, service_key=SERVICE_KEY):
        self.dir = tempfile.TemporaryDirectory(prefix="nodecloud-py-")
        peer, service = listener(), listener()
        self.port = service.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.peer_address = f"127.0.0.1:{peer.getsockname()[1]}"
        self.socket_path = os.path.join(self.dir.name, "service.sock")
        key_line = f'service_key = "{service_key}"\n' if service_key else ""
        config = (
            "[cluster]\n"
            f'name = "{CLUSTER}"\n'
            'topology = "mesh"\n'
            f'secret = "{SECRET}"\n'
            f"{key_line}"
            "heartbeat_interval_ms = 200\n"
            "\n"
            "[[nodes]]\n"
            f'name = "{NODE}"\n'
            'role = "master"\n'
            f'listen = "{self.peer_address}"\n'
            f'service = "{self.address}"\n'
            f'service_socket = "{self.socket_path}"\n'
        )
        self.config = os.path.join(self.dir.name, "cluster.toml")
        with open(self.config, "w") as f:
            f.write(config)
        binary = os.environ.get("NODECLOUD_BIN", "target/debug/nodecloud")
        self.log = open(os.path.join(self.dir.name, "node.log"), "w+")
        env = {k: v for k, v in os.environ.items() if k != "LISTEN_PID"}
        env.update(LISTEN_FDS="2", LISTEN_FDNAMES="peer:service")
        # close_fds=False: the handed-over fds must survive; Python's own are not inheritable.
        self.proc = subprocess.Popen([binary, "--config", self.config, "--node", NODE],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, close_fds=False,
                                     preexec_fn=inherit(peer, service))
        # The node holds them now.
        peer.close()
        service.close()
        try:
            wait_started(self, STARTUP_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def logs(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        self.dir.cleanup()


class CodecTest(unittest.TestCase):
    """No node needed: the encodings of docs/PROTOCOL.md."""

    def test_proof_test_vector(self):
        args = ("demo", "worker-1", "master",
                bytes.fromhex("00112233445566778899aabbccddeeff"),
                bytes.fromhex("ffeeddccbbaa99887766554433221100"),
                bytes(range(0x00, 0x20)), bytes(range(0x20, 0x40)))
        secret = b"demo-secret-0123456789"
        self.assertEqual(
            nodecloud_client.proof(secret, nodecloud_client.LABEL_ACCEPTOR, *args).hex(),
            "3b09c1261bfbe0476b0ec7d86cf02d578cfdd945d59eb8d8f95c9c67b67bd7c7")
        self.assertEqual(
            nodecloud_client.proof(secret, nodecloud_client.LABEL_DIALLER, *args).hex(),
            "3a63a39d98bd3172dfc54519e6ac0267512520089ae3b2da01a2b0b0d35bee52")

    def test_floats(self):
        dumps = nodecloud_client._dumps
        # The payload of the worked example: 21.5 as a float32.
        self.assertEqual(dumps({"celsius": 21.5}).hex(), "a16763656c73697573fa41ac0000")
        self.assertEqual(dumps(1.0).hex(), "fa3f800000")  # a float, not the integer 1
        self.assertEqual(dumps(21.3)[:1], b"\xfb")  # not exact as a float32
        self.assertEqual(dumps(float("inf")).hex(), "fa7f800000")  # never half precision

    def test_call_frame_of_the_worked_example(self):
        conn = nodecloud_client._Conn.__new__(nodecloud_client._Conn)
        conn.limit, conn.send_seq = 1 << 20, 5
        sent = []
        conn.sock = type("S", (), {"sendall": lambda self, b: sent.append(b)})()
        conn._write("call", {"id": 0, "method": "py.add", "target": None, "timeout_ms": 1000,
                             "payload": nodecloud_client._dumps({"a": 2, "b": 3})})
        self.assertEqual(sent[0].hex(),
                         "000000418205a16463616c6ca562696400666d6574686f646670792e616464"
                         "66746172676574f66a74696d656f75745f6d731903e8677061796c6f616447"
                         "a2616102616203")


class NodeTest(unittest.TestCase):
    node = None

    @classmethod
    def setUpClass(cls):
        cls.node = Node()

    @classmethod
    def tearDownClass(cls):
        if cls.node is not None:
            cls.node.stop()

    def connect(self, name="py-test", key=SERVICE_KEY, **kw):
        client = Client.connect(self.node.address, CLUSTER, key, name=name, timeout=WAIT, **kw)
        self.addCleanup(client.close)
        return client

    def run(self, result=None):
        # On failure, show the node's log.
        before = len(result.failures) + len(result.errors) if result is not None else 0
        out = super().run(result)
        if result is not None and len(result.failures) + len(result.errors) > before:
            if self.node is not None and self.node.proc.poll() is None:
                sys.stderr.write(f"\n--- node log ---\n{self.node.logs()[-4000:]}\n")
        return out


class HandshakeTest(NodeTest):
    def test_service_key_authenticates(self):
        client = self.connect()
        self.assertEqual(client.node, NODE)
        client.sync(WAIT)

    def test_version_2_welcome_states_the_limits(self):
        client = self.connect()
        welcome = client._conn.welcome
        self.assertEqual(welcome["max_subscriptions"], 1024)
        self.assertEqual(welcome["max_methods"], 256)
        self.assertEqual(client._conn.limit, welcome["max_frame_bytes"])
        self.assertEqual(welcome["envelope_overhead_bytes"], 130 + len(NODE))

    def test_wrong_key_is_auth_failed(self):
        with self.assertRaises(HandshakeError) as cm:
            Client.connect(self.node.address, CLUSTER, "not-the-service-key-0123", timeout=WAIT)
        self.assertEqual(cm.exception.code, "auth_failed")

    def test_cluster_secret_is_not_the_service_key(self):
        with self.assertRaises(HandshakeError) as cm:
            Client.connect(self.node.address, CLUSTER, SECRET, timeout=WAIT)
        self.assertEqual(cm.exception.code, "auth_failed")

    def test_wrong_cluster_is_refused(self):
        with self.assertRaises(HandshakeError) as cm:
            Client.connect(self.node.address, "other-cluster", SERVICE_KEY, timeout=WAIT)
        self.assertEqual(cm.exception.code, "cluster")

    def test_expected_node_name(self):
        with self.assertRaises(HandshakeError) as cm:
            Client.connect(self.node.address, CLUSTER, SERVICE_KEY, node="n9", timeout=WAIT)
        self.assertEqual(cm.exception.code, "bad_name")
        self.connect(node=NODE).sync(WAIT)


class ConnectErrorTest(NodeTest):
    """What connect says when the address is wrong, without a traceback to read."""

    def closed_port(self):
        port = ClosedPort()
        self.addCleanup(port.close)
        return port.address

    def test_a_down_node_is_a_connect_error_naming_the_address(self):
        address = self.closed_port()
        with self.assertRaises(ConnectError) as cm:
            Client.connect(address, CLUSTER, SERVICE_KEY, timeout=WAIT)
        self.assertEqual(str(cm.exception),
                         f"cannot connect to {address}: connection refused (is the node "
                         "running, and is this its service port?)")
        self.assertEqual(cm.exception.address, address)
        self.assertIsNone(cm.exception.node)
        self.assertIsInstance(cm.exception, ConnectionError)
        self.assertIsInstance(cm.exception.__cause__, ConnectionRefusedError)

    def test_a_connect_error_names_the_expected_node(self):
        address = self.closed_port()
        with self.assertRaises(ConnectError) as cm:
            Client.connect(address, CLUSTER, SERVICE_KEY, node="worker-2", timeout=WAIT)
        self.assertTrue(str(cm.exception).startswith(
            f"cannot connect to {address} (node worker-2): connection refused"),
            str(cm.exception))
        self.assertEqual(cm.exception.node, "worker-2")

    def test_a_missing_unix_socket_is_a_connect_error(self):
        path = os.path.join(self.node.dir.name, "nobody.sock")
        with self.assertRaises(ConnectError) as cm:
            Client.connect(path, CLUSTER, SERVICE_KEY, timeout=WAIT)
        self.assertEqual(str(cm.exception),
                         f"cannot connect to {path}: no such socket (is the node running, "
                         "and is this its service_socket path?)")

    def test_a_peer_port_is_not_admitted_and_says_so(self):
        with self.assertRaises(HandshakeError) as cm:
            Client.connect(self.node.peer_address, CLUSTER, SERVICE_KEY, timeout=WAIT)
        self.assertEqual(cm.exception.code, "not_admitted")
        self.assertEqual(cm.exception.address, self.node.peer_address)
        text = str(cm.exception)
        self.assertTrue(text.startswith(f"cannot attach to {self.node.peer_address}: "
                                        "not_admitted: "), text)
        self.assertTrue(text.endswith("this is a peer port; use the node's service port"),
                        text)
        # The node's own reason is kept.
        self.assertIn('"py-app" is not in this cluster\'s configuration', text)

    def test_handshake_errors_name_the_address(self):
        with self.assertRaises(HandshakeError) as cm:
            Client.connect(self.node.address, CLUSTER, "not-the-service-key-0123", timeout=WAIT)
        self.assertTrue(str(cm.exception).startswith(
            f"cannot attach to {self.node.address}: auth_failed: "), str(cm.exception))


class UnixSocketTest(NodeTest):
    def test_unix_socket(self):
        mode = stat.S_IMODE(os.stat(self.node.socket_path).st_mode)
        self.assertEqual(mode, 0o600)
        client = Client.connect(self.node.socket_path, CLUSTER, SERVICE_KEY, timeout=WAIT)
        self.addCleanup(client.close)
        client.implement("py.unix", lambda v, f: v + 1)
        client.sync(WAIT)
        tcp = self.connect("py-tcp")
        self.assertEqual(tcp.call("py.unix", 41), 42)


class EventTest(NodeTest):
    def test_publish_round_trip(self):
        client = self.connect()
        client.subscribe("sensor.temperature")
        client.sync(WAIT)
        client.publish("sensor.temperature", {"celsius": 21.5})
        event = client.next_event(WAIT)
        self.assertEqual(event, ("sensor.temperature", NODE, {"celsius": 21.5}))
        self.assertIsInstance(event[2]["celsius"], float)

    def test_floats_stay_floats_and_bytes_stay_bytes(self):
        client = self.connect()
        client.subscribe("t.values")
        client.sync(WAIT)
        value = {"f": 1.0, "i": 1, "b": b"\x00\x01", "s": "x", "l": [1, 2.5, None, True]}
        client.publish("t.values", value, target=NODE)
        topic, from_node, got = client.next_event(WAIT)
        self.assertEqual(got, value)
        self.assertIsInstance(got["f"], float)
        self.assertIsInstance(got["b"], bytes)

    def test_one_app_publishes_to_another(self):
        sub = self.connect("py-sub")
        pub = self.connect("py-pub")
        sub.subscribe("t.between")
        sub.sync(WAIT)
        for i in range(100):
            pub.publish("t.between", i)
        got = [sub.next_event(WAIT) for _ in range(100)]
        self.assertEqual([e[2] for e in got], list(range(100)))
        self.assertIsNone(pub.next_event(0))  # pub did not subscribe

    def test_a_batch_of_publishes_arrives_in_order_like_single_publishes(self):
        sub = self.connect("py-batch-sub")
        pub = self.connect("py-batch-pub")
        sub.subscribe("t.batch")
        sub.sync(WAIT)
        pub.publish("t.batch", -1)
        pub.publish_batch("t.batch", range(500))
        pub.publish_batch("t.batch", [])
        pub.publish("t.batch", 500)
        got = [sub.next_event(WAIT) for _ in range(502)]
        self.assertEqual([e[2] for e in got], list(range(-1, 501)))
        self.assertEqual([e.seq for e in got], list(range(1, 503)))
        with self.assertRaises(FrameTooLarge):
            pub.publish_batch("t.batch", [1, b"x" * (2 << 20)])
        pub.publish("t.batch", "after")
        self.assertEqual(sub.next_event(WAIT)[2], "after")  # nothing of the refused batch

    def test_wildcards_match_one_token_or_the_rest(self):
        client = self.connect("py-wild")
        client.subscribe("w.*")
        client.subscribe("x.>")
        client.sync(WAIT)
        for topic, value in [("w.a", 1), ("w.a.b", 2), ("x.a", 3), ("x.a.b", 4), ("w", 5)]:
            client.publish(topic, value)
        client.sync(WAIT)
        got = [client.next_event(WAIT) for _ in range(3)]
        self.assertEqual(got, [("w.a", NODE, 1), ("x.a", NODE, 3), ("x.a.b", NODE, 4)])
        client.sync(WAIT)
        self.assertIsNone(client.next_event(0))

    def test_publishing_to_a_pattern_is_refused(self):
        client = self.connect()
        client.publish("w.*", 1)
        with self.assertRaises(Refused) as cm:
            client.sync(WAIT)
        self.assertEqual((cm.exception.op, cm.exception.code), ("publish", "bad_topic"))

    def test_cluster_lists_the_node_with_its_methods(self):
        client = self.connect("py-cluster")
        client.implement("py.cluster.test", lambda value, from_node: value)
        client.sync(WAIT)
        view = client.cluster()
        self.assertEqual((view["cluster"], view["node"]), (CLUSTER, NODE))
        (me,) = view["members"]
        self.assertEqual((me["name"], me["state"]), (NODE, "up"))
        self.assertEqual(len(me["incarnation"]), 36)
        self.assertGreater(me["stats"]["pid"], 0)
        # Methods are replicated state: the view shows the new one once the node's
        # membership has taken it (within a heartbeat or so).
        deadline = time.monotonic() + WAIT
        while "py.cluster.test" not in me["methods"]:
            self.assertLess(time.monotonic(), deadline, f"methods: {me['methods']}")
            time.sleep(0.05)
            (me,) = client.cluster()["members"]

    def test_events_carry_their_id_and_their_number_in_their_stream(self):
        client = self.connect(overflow="drop_oldest")
        client.subscribe("t.seq")
        client.sync(WAIT)
        for v in range(3):
            client.publish("t.seq", v)
        events = [client.next_event(WAIT) for _ in range(3)]
        self.assertEqual([tuple(e) for e in events], [("t.seq", NODE, v) for v in range(3)])
        seqs = [e.seq for e in events]
        self.assertEqual(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2])
        self.assertGreaterEqual(seqs[0], 1)
        self.assertEqual(len({e.id for e in events}), 3)
        self.assertEqual([(e.targeted, e.dropped) for e in events], [(False, 0)] * 3)
        client.publish("t.seq", 9, target=NODE)
        targeted = client.next_event(WAIT)
        self.assertTrue(targeted.targeted)
        self.assertEqual(targeted.seq, 1, "targeted events are numbered apart")

    def test_unsubscribe_stops_deliveries(self):
        client = self.connect()
        client.subscribe("t.a")
        client.subscribe("t.b")
        client.unsubscribe("t.a")
        client.sync(WAIT)
        client.publish("t.a", 1)
        client.publish("t.b", 2)
        self.assertEqual(client.next_event(WAIT), ("t.b", NODE, 2))
        client.sync(WAIT)
        self.assertIsNone(client.next_event(0))

    def test_refused_empty_topic_keeps_link(self):
        client = self.connect()
        client.subscribe("")
        with self.assertRaises(Refused) as cm:
            client.sync(WAIT)
        self.assertEqual((cm.exception.op, cm.exception.code), ("subscribe", "bad_topic"))
        # The link stays open.
        client.subscribe("t.after")
        client.sync(WAIT)
        client.publish("t.after", "ok")
        self.assertEqual(client.next_event(WAIT), ("t.after", NODE, "ok"))

    def test_refused_callback(self):
        refusals = []
        got = threading.Event()

        def on_refused(r):
            refusals.append(r)
            got.set()

        client = self.connect(on_refused=on_refused)
        client.unsubscribe("t.never")
        self.assertTrue(got.wait(WAIT))
        self.assertEqual((refusals[0].op, refusals[0].code), ("unsubscribe", "not_subscribed"))
        client.sync(WAIT)  # nothing left to raise

    def test_publish_to_unknown_target_is_unknown_node(self):
        client = self.connect()
        client.publish("t.x", 1, target="nowhere")
        with self.assertRaises(Refused) as cm:
            client.sync(WAIT)
        self.assertEqual((cm.exception.op, cm.exception.code), ("publish", "unknown_node"))


class CallTest(NodeTest):
    def test_call_own_method_through_the_node(self):
        client = self.connect()
        froms = []

        def add(value, from_node):
            froms.append(from_node)
            return {"sum": value["a"] + value["b"]}

        client.implement("py.add", add)
        client.sync(WAIT)
        self.assertEqual(client.call("py.add", {"a": 2, "b": 3}, timeout_ms=5000), {"sum": 5})
        self.assertEqual(froms, [NODE])

    def test_call_between_apps(self):
        server = self.connect("py-server")
        server.implement("py.echo", lambda v, f: v)
        server.sync(WAIT)
        caller = self.connect("py-caller")
        value = {"x": [1.5, b"raw", "text"]}
        self.assertEqual(caller.call("py.echo", value, target=NODE), value)

    def test_remote_error(self):
        client = self.connect()

        def fail(value, from_node):
            raise ValueError("no")

        client.implement("py.fail", fail)
        client.sync(WAIT)
        with self.assertRaises(CallError) as cm:
            client.call("py.fail", {})
        self.assertEqual(cm.exception.code, "remote_error")
        self.assertIn("handler_error: no", cm.exception.message)

    def test_unknown_method_is_no_implementer(self):
        client = self.connect()
        with self.assertRaises(CallError) as cm:
            client.call("py.nobody", 1)
        self.assertEqual(cm.exception.code, "no_implementer")

    def test_unknown_target_is_unknown_node(self):
        client = self.connect()
        with self.assertRaises(CallError) as cm:
            client.call("py.add", 1, target="nowhere")
        self.assertEqual(cm.exception.code, "unknown_node")

    def test_slow_handler_times_out(self):
        client = self.connect()
        release = threading.Event()
        self.addCleanup(release.set)
        client.implement("py.slow", lambda v, f: release.wait(WAIT * 2))
        client.sync(WAIT)
        with self.assertRaises(CallError) as cm:
            client.call("py.slow", 1, timeout_ms=300)
        self.assertEqual(cm.exception.code, "timeout")

    def test_concurrent_calls(self):
        client = self.connect()
        client.implement("py.square", lambda v, f: v * v)
        client.sync(WAIT)
        results = {}

        def worker(i):
            results[i] = client.call("py.square", i)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 2)
        self.assertEqual(results, {i: i * i for i in range(20)})

    def test_implementer_gone(self):
        server = self.connect("py-gone")
        entered = threading.Event()
        release = threading.Event()
        self.addCleanup(release.set)

        def hang(value, from_node):
            entered.set()
            release.wait(WAIT * 2)

        server.implement("py.gone", hang)
        server.sync(WAIT)
        caller = self.connect("py-caller")
        outcome = {}

        def call():
            try:
                caller.call("py.gone", 1, timeout_ms=int(WAIT * 2000))
            except CallError as exc:
                outcome["code"] = exc.code

        t = threading.Thread(target=call)
        t.start()
        self.assertTrue(entered.wait(WAIT))
        server.close()
        t.join(WAIT)
        self.assertEqual(outcome.get("code"), "implementer_gone")

    def test_respond_to_unknown_request(self):
        client = self.connect()
        # Not something the client does by itself: a respond to a request never sent.
        client._send("respond", {"id": 987654321, "outcome": {"ok": b"\xf6"}})
        with self.assertRaises(Refused) as cm:
            client.sync(WAIT)
        self.assertEqual((cm.exception.op, cm.exception.code), ("respond", "unknown_request"))
        client.sync(WAIT)

    def test_peer_only_message_is_unexpected(self):
        client = self.connect()
        client._send("deliver", {"topic": "t", "from": NODE, "payload": b"\xf6"})
        with self.assertRaises(ConnectionClosed) as cm:
            client.next_event(WAIT)
        self.assertEqual(cm.exception.code, "unexpected_message")

    def test_close_fails_pending_calls(self):
        client = self.connect()
        client.close()
        with self.assertRaises(ConnectionClosed):
            client.call("py.anything", 1)


class ExampleTest(NodeTest):
    """example.py, driven as an integration test would drive it."""

    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "example.py")

    def run_example(self, *args):
        """example.py run to completion, with stdin closed: (status, stdout, stderr)."""
        env = dict(os.environ, PY_TEST_KEY=SERVICE_KEY)
        done = subprocess.run([sys.executable, self.SCRIPT, *args], stdin=subprocess.DEVNULL,
                              capture_output=True, env=env, text=True, timeout=WAIT * 4)
        return done.returncode, done.stdout, done.stderr

    def test_example_reports_a_down_node_in_one_line_and_exits_1(self):
        port = ClosedPort()
        self.addCleanup(port.close)
        status, out, err = self.run_example("--address", port.address, "--cluster", CLUSTER,
                                            "--key-env", "PY_TEST_KEY")
        self.assertEqual(status, 1, err)
        self.assertEqual(out, "")
        self.assertEqual(err, f"example: cannot connect to {port.address}: connection refused "
                              "(is the node running, and is this its service port?)\n")

    def test_example_pointed_at_a_peer_port_exits_1_with_the_hint(self):
        status, out, err = self.run_example("--address", self.node.peer_address,
                                            "--cluster", CLUSTER, "--key-env", "PY_TEST_KEY")
        self.assertEqual(status, 1, err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith(
            f"example: cannot attach to {self.node.peer_address}: not_admitted: "), err)
        self.assertTrue(err.rstrip("\n").endswith("use the node's service port"), err)

    def test_example_wrong_key_exits_1(self):
        status, _, err = self.run_example("--address", self.node.address, "--cluster",
                                          CLUSTER, "--key", "not-the-service-key-0123")
        self.assertEqual(status, 1, err)
        self.assertIn("auth_failed", err)
        self.assertNotIn("Traceback", err)

    def test_example_bad_arguments_exit_2(self):
        cases = [
            ("--address", self.node.address, "--key-env", "PY_TEST_KEY"),  # no --cluster
            ("--address", "no-port-here", "--cluster", CLUSTER, "--key-env", "PY_TEST_KEY"),
            ("--address", self.node.address, "--cluster", CLUSTER, "--key-env",
             "PY_TEST_UNSET_VARIABLE"),
            ("--address", self.node.address, "--cluster", CLUSTER, "--key-env", "PY_TEST_KEY",
             "--name", "not a name"),
        ]
        for args in cases:
            with self.subTest(args=args):
                status, out, err = self.run_example(*args)
                self.assertEqual(status, 2, err)
                self.assertEqual(out, "")
                self.assertNotIn("Traceback", err)

    def start_example(self):
        env = dict(os.environ, PY_TEST_KEY=SERVICE_KEY)
        proc = subprocess.Popen(
            [sys.executable, self.SCRIPT, "--address", self.node.address, "--cluster", CLUSTER,
             "--key-env", "PY_TEST_KEY", "--name", "py-example"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)

        def cleanup():
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass

        self.addCleanup(cleanup)
        lines = queue.Queue()

        def read():
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        self.assertEqual(lines.get(timeout=WAIT * 2), "ready")
        return proc, lines

    def test_example_serves_and_prints_events(self):
        proc, lines = self.start_example()
        # Its own publish comes back to it.
        event = json.loads(lines.get(timeout=WAIT))
        self.assertEqual(event, {"topic": "sensor.temperature", "from": NODE,
                                 "value": {"celsius": 21.5}})
        client = self.connect()
        self.assertEqual(client.call("py.add", {"a": 20, "b": 22}), {"sum": 42})
        with self.assertRaises(CallError) as cm:
            client.call("py.fail", {})
        self.assertEqual((cm.exception.code, cm.exception.message), ("remote_error",
                                                                   "handler_error: no"))
        client.publish("sensor.temperature", {"celsius": -3.0})
        event = json.loads(lines.get(timeout=WAIT))
        self.assertEqual(event["value"], {"celsius": -3.0})
        proc.stdin.close()
        self.assertEqual(proc.wait(WAIT), 0)

    def test_example_stops_on_sigterm(self):
        proc, lines = self.start_example()
        proc.terminate()
        self.assertEqual(proc.wait(WAIT), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
