#!/usr/bin/env python3
"""Sends junk UDP datagrams at a WebRTC media port at a fixed rate, for a bounded time.

Half are STUN Binding requests naming ICE ufrags no session has (what a scanner or a stale
client sends), half random bytes (not STUN, not DTLS, not RTP of any session). Loopback only:
the target must be in 127.0.0.0/8.

    junk-sender.py HOST PORT RATE SECONDS
"""
import ipaddress
import os
import socket
import struct
import sys
import time

host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
if not ipaddress.ip_address(host).is_loopback:
    sys.exit("junk-sender only targets loopback addresses")


def stun_request() -> bytes:
    username = os.urandom(4).hex() + ":" + os.urandom(4).hex()
    value = username.encode()
    attr = struct.pack("!HH", 0x0006, len(value)) + value + b"\0" * (-len(value) % 4)
    attr += struct.pack("!HH", 0x0008, 20) + os.urandom(20)
    return struct.pack("!HHI", 0x0001, len(attr), 0x2112A442) + os.urandom(12) + attr


sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
for s in sockets:
    s.bind((host, 0))
batch = max(1, rate // 100)
sent = 0
start = time.monotonic()
while time.monotonic() - start < seconds:
    tick = time.monotonic()
    for i in range(batch):
        data = stun_request() if i % 2 == 0 else os.urandom(40 + i % 200)
        sockets[i % len(sockets)].sendto(data, (host, port))
    sent += batch
    time.sleep(max(0.0, 0.01 - (time.monotonic() - tick)))
elapsed = time.monotonic() - start
print(f"sent {sent} junk datagrams in {elapsed:.1f} s ({sent / elapsed:.0f}/s)", file=sys.stderr)
