#!/usr/bin/env python3
"""An independent, non-Rust WebRTC peer for Cascade's interop tests: aiortc (PyPI), in its
default configuration, publishing over WHIP or watching over WHEP.

    aiortc_peer.py publish URL --codec vp8|h264 --seconds N
    aiortc_peer.py watch URL --seconds N

A published video frame carries its number as a 4x4 grid of black and white cells (16 bits),
which survives lossy encoding; a watcher decodes every frame, reads the numbers back and
prints one JSON line: frames decoded, the numbers in order or not, the codec, audio frames.
"""
import argparse
import asyncio
import fractions
import json
import math
import struct
import sys
import time
import urllib.request

import av
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

WIDTH, HEIGHT, FPS = 320, 240, 30
GRID = 4
VIDEO_CLOCK = 90000


def post_offer(url: str, sdp: str) -> tuple[str, str]:
    request = urllib.request.Request(url, data=sdp.encode(), method="POST",
                                     headers={"Content-Type": "application/sdp"})
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 201:
            raise SystemExit(f"{url}: HTTP {response.status}")
        location = response.headers["Location"]
        return response.read().decode(), location


def counter_frame(number: int) -> av.VideoFrame:
    luma = bytearray(WIDTH * HEIGHT)
    cell_w, cell_h = WIDTH // GRID, HEIGHT // GRID
    for bit in range(GRID * GRID):
        value = 235 if (number >> bit) & 1 else 16
        cx, cy = (bit % GRID) * cell_w, (bit // GRID) * cell_h
        row = bytes([value]) * cell_w
        for y in range(cy, cy + cell_h):
            luma[y * WIDTH + cx: y * WIDTH + cx + cell_w] = row
    frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    for index, plane in enumerate(frame.planes):
        if index == 0:
            data, width, height = luma, WIDTH, HEIGHT
        else:
            width, height = WIDTH // 2, HEIGHT // 2
            data = bytes([128]) * (width * height)
        stride = plane.line_size
        if stride == width:
            plane.update(bytes(data))
        else:
            padded = bytearray(stride * height)
            for y in range(height):
                padded[y * stride: y * stride + width] = data[y * width: (y + 1) * width]
            plane.update(bytes(padded))
    return frame


def read_counter(frame: av.VideoFrame) -> int:
    frame = frame.reformat(width=WIDTH, height=HEIGHT, format="yuv420p")
    plane = frame.planes[0]
    data, stride = bytes(plane), plane.line_size
    cell_w, cell_h = WIDTH // GRID, HEIGHT // GRID
    number = 0
    for bit in range(GRID * GRID):
        cx = (bit % GRID) * cell_w + cell_w // 2
        cy = (bit // GRID) * cell_h + cell_h // 2
        total = sum(data[(cy + dy) * stride + cx + dx] for dy in (-4, 0, 4) for dx in (-4, 0, 4))
        if total / 9 > 128:
            number |= 1 << bit
    return number


class CounterTrack(MediaStreamTrack):
    """Video frames numbered 0, 1, 2, ... at FPS."""
    kind = "video"

    def __init__(self):
        super().__init__()
        self.number = 0
        self.started = None

    async def recv(self):
        if self.started is None:
            self.started = time.monotonic()
        due = self.started + self.number / FPS
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = counter_frame(self.number)
        frame.pts = self.number * (VIDEO_CLOCK // FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.number += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """A 440 Hz tone in 20 ms frames (Opus)."""
    kind = "audio"

    def __init__(self):
        super().__init__()
        self.samples = 0
        self.started = None

    async def recv(self):
        rate, count = 48000, 960
        if self.started is None:
            self.started = time.monotonic()
        due = self.started + self.samples / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        pcm = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * (self.samples + i) / rate)))
                       for i in range(count))
        frame = av.AudioFrame(format="s16", layout="mono", samples=count)
        frame.planes[0].update(pcm)
        frame.sample_rate = rate
        frame.pts = self.samples
        frame.time_base = fractions.Fraction(1, rate)
        self.samples += count
        return frame


def prefer(transceiver, mime: str):
    codecs = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    chosen = [c for c in codecs if c.mimeType.lower() == mime.lower()]
    if not chosen:
        raise SystemExit(f"aiortc cannot send {mime}")
    transceiver.setCodecPreferences(chosen)


async def publish(args):
    pc = RTCPeerConnection()
    video = pc.addTransceiver(CounterTrack(), direction="sendonly")
    prefer(video, "video/" + args.codec.upper())
    pc.addTransceiver(ToneTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    answer, location = await asyncio.to_thread(post_offer, args.url, pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    print(json.dumps({"published": True, "location": location}), flush=True)
    await asyncio.sleep(args.seconds)
    await pc.close()


async def watch(args):
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    numbers, pts, audio_frames = [], [], 0

    async def read_video(track):
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            numbers.append(read_counter(frame))
            pts.append(frame.pts)

    async def read_audio(track):
        nonlocal audio_frames
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            audio_frames += 1

    @pc.on("track")
    def on_track(track):
        asyncio.ensure_future(read_video(track) if track.kind == "video" else read_audio(track))

    await pc.setLocalDescription(await pc.createOffer())
    answer, location = await asyncio.to_thread(post_offer, args.url, pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await asyncio.sleep(args.seconds)
    await pc.close()
    increasing = all(b > a for a, b in zip(numbers, numbers[1:]))
    print(json.dumps({
        "frames": len(numbers),
        # Frame numbers drawn by an aiortc publisher, read back from the decoded pictures.
        "increasing": increasing,
        # Presentation times, whatever the publisher: decoded frames in order.
        "pts_increasing": all(b > a for a, b in zip(pts, pts[1:])),
        "first": numbers[0] if numbers else None,
        "last": numbers[-1] if numbers else None,
        "distinct": len(set(numbers)),
        "audio_frames": audio_frames,
        "location": location,
    }), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["publish", "watch"])
    parser.add_argument("url")
    parser.add_argument("--codec", default="vp8", choices=["vp8", "h264"])
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    asyncio.run(publish(args) if args.mode == "publish" else watch(args))


if __name__ == "__main__":
    sys.exit(main())
