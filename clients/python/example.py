#!/usr/bin/env python3
"""An example nodecloud application.

It attaches to a node's service listener, serves two methods and listens to one topic:

- ``py.add``: request ``{"a": int, "b": int}`` -> response ``{"sum": a + b}``;
- ``py.fail``: always fails (the caller gets ``remote_error`` with "handler_error: no");
- subscribes to ``sensor.temperature`` and publishes ``{"celsius": 21.5}`` on it once.

Once the node has taken the methods and the subscription it prints ``ready``, then one JSON
line per delivered event: ``{"topic": ..., "from": ..., "value": ...}``. It runs until its
standard input closes or it receives SIGTERM (or SIGINT), then says ``bye``.

Exit status, as the ``nodecloud`` command line: 0 after an orderly end (also when the node
says ``bye``: it is shutting down); 1 when it cannot connect or attach, or the link fails,
with one line on standard error naming the address and the cause; 2 for bad arguments.

    pip install ./clients/python    # or run it from the checkout: it finds the package beside it
    python3 example.py --address 127.0.0.1:7200 --cluster star-demo --key-env NC_SERVICE_KEY
"""

import argparse
import json
import os
import signal
import sys
import threading

from nodecloud import Client, NodecloudError

# As the nodecloud command line: 0 ok, 1 a runtime error, 2 bad arguments (argparse's own
# status, which parser.error uses).
EXIT_FAILURE = 1


def add(value, from_node):
    return {"sum": value["a"] + value["b"]}


def fail(value, from_node):
    raise ValueError("no")


def to_json(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def main():
    parser = argparse.ArgumentParser(description="An example nodecloud application")
    parser.add_argument("--address", required=True,
                        help="the node's service address: host:port, or a Unix socket path")
    parser.add_argument("--cluster", required=True, help="the cluster name")
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", help="the service key (or the cluster secret)")
    key.add_argument("--key-env", help="an environment variable holding the service key")
    parser.add_argument("--name", default="py-app", help="this application's name")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds allowed for connecting and the handshake")
    args = parser.parse_args()

    if args.key_env is not None:
        secret = os.environ.get(args.key_env)
        if secret is None:
            parser.error(f"environment variable {args.key_env} is not set")
    else:
        secret = args.key
    secret = os.fsencode(secret)

    try:
        client = Client.connect(args.address, args.cluster, secret, name=args.name,
                                timeout=args.timeout)
    except ValueError as exc:  # an invalid name or address: the arguments are wrong
        parser.error(str(exc))
    stopping = threading.Event()

    def stop(*_):
        if not stopping.is_set():
            stopping.set()
            # close() waits for the reader thread: not from inside a signal handler.
            threading.Thread(target=client.close, args=("stopping",), daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def watch_stdin():
        # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader makes the
        # interpreter abort at exit.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        stop()

    client.implement("py.add", add)
    client.implement("py.fail", fail)
    client.subscribe("sensor.temperature")
    client.publish("sensor.temperature", {"celsius": 21.5})
    client.sync()  # the node has handled all of the above, and refused none of it
    print("ready", flush=True)
    threading.Thread(target=watch_stdin, name="stdin", daemon=True).start()

    for topic, from_node, value in client.events():
        line = json.dumps({"topic": topic, "from": from_node, "value": value},
                          default=to_json)
        print(line, flush=True)

    closed = client.closed
    if stopping.is_set() or closed is None or closed.code in ("closed", "bye"):
        return 0
    print(f"example: the link closed: {closed.code}: {closed.message}", file=sys.stderr)
    return EXIT_FAILURE


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (NodecloudError, OSError) as exc:
        # ConnectError, HandshakeError, a refusal, a closed link, a sync that timed out: one
        # line, no traceback.
        print(f"example: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
