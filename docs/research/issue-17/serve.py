"""Throwaway RTSP server (GstRtspServer through GI): one still image as an H.264 stream, TCP/UDP."""
import sys, gi
gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')
from gi.repository import Gst, GstRtspServer, GLib
Gst.init(None)
server = GstRtspServer.RTSPServer(); server.set_address('127.0.0.1'); server.set_service(sys.argv[2])
f = GstRtspServer.RTSPMediaFactory(); f.set_shared(True)
f.set_launch(f'( filesrc location={sys.argv[1]} ! pngdec ! imagefreeze ! videoconvert ! video/x-raw,format=I420,framerate=10/1 '
             '! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 config-interval=1 )')
server.get_mount_points().add_factory('/cam', f)
assert server.attach(None) > 0
print('serving rtsp://127.0.0.1:%s/cam' % sys.argv[2], flush=True)
GLib.MainLoop().run()
