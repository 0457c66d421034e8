"""The rtsp suite's camera: GStreamer's RTSP server (Debian's gir1.2-gst-rtsp-server-1.0 through
python3-gi) on 127.0.0.1, one H.264 stream per mount, each a still RGB frame repeated at 10 fps.

    serve.py [--lossless] PORT NAME=FILE:WIDTHxHEIGHT [...]

FILE holds the frame's raw RGB bytes, rows padded to 4 bytes (GStreamer's default stride).
With --lossless (`bench runtime`) x264 encodes at quantizer 0, so every decoded frame of a
stream is the same bytes (x264 prints once that the baseline profile cannot be lossless, then
negotiates one that can; `bench runtime` checks that the frames' detections never vary).
Prints `ready` once listening; runs until killed."""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main():
    Gst.init(None)
    args = sys.argv[1:]
    lossless = args[:1] == ["--lossless"]
    if lossless:
        args = args[1:]
    port, mounts = args[0], args[1:]
    quality = "pass=quant quantizer=0 " if lossless else ""
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    for mount in mounts:
        name, rest = mount.split("=", 1)
        path, size = rest.rsplit(":", 1)
        width, height = size.split("x")
        factory = GstRtspServer.RTSPMediaFactory()
        # One encoder per mount, whoever connects (a reconnecting client joins it).
        factory.set_shared(True)
        factory.set_launch(
            f'( filesrc location="{path}" ! rawvideoparse format=rgb width={width} '
            f"height={height} framerate=10/1 ! imagefreeze ! videoconvert ! "
            "video/x-raw,format=I420,framerate=10/1 ! "
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 {quality}! "
            "rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        server.get_mount_points().add_factory("/" + name, factory)
    if server.attach(None) == 0:
        sys.exit(f"serve.py: cannot listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


main()
