#!/usr/bin/env python3
"""An IP camera for the tests: GStreamer's RTSP server (gst-rtsp-server, what many cameras
and NVRs embed) serving one pipeline to every client, like a camera's single encoder.

usage: rtsp_camera.py ADDRESS PORT PATH LAUNCH [USER PASSWORD]

Prints "ready" once it listens. With USER and PASSWORD it requires them (HTTP Basic, as
gst-rtsp-server offers; digest-only cameras behave the same to a client with credentials).
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main():
    address, port, path, launch = sys.argv[1:5]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(address)
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    if len(sys.argv) >= 7:
        user, password = sys.argv[5:7]
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(Gst.Structure.new_empty("viewer"))
        permissions.add_permission_for_role("viewer", "media.factory.access", True)
        permissions.add_permission_for_role("viewer", "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {address}:{port}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
