"""`bench runtime`'s peer: the same detector as `aperture-runtime`, written the way a Python
team would ship it, with the onnxruntime Python package, numpy and GStreamer's Python bindings.

    runtime_peer.py --manifest M --golden OUT.json --metrics FILE --detections FILE
                    [--threads N] [--latency-ms L] URL...

It mirrors the runtime's design (device/runtime/src/service.rs), so that the bench compares
implementations, not architectures:

* the model in one onnxruntime session on the CPU, N intra-op threads, one inter-op thread,
  all graph optimisations, no memory pattern (what `aperture_runtime::OrtDetector` asks of
  ONNX Runtime);
* first a self-test: the detections on each golden frame of the model's `golden/reference.json`
  are written to OUT.json (the bench checks them with the runtime's own self-test);
* one thread per camera, pulling RGB frames from the runtime's GStreamer pipeline text
  (rtspsrc over TCP, avdec_h264, videoconvert and videoscale to the model's input size, an
  appsink that keeps only the newest frame) into one bounded queue of two places per camera,
  dropping a frame when it is full;
* one inference thread: preprocessing (channel order, mean and std, bilinear resize when the
  frame is not the input's size), the session, NanoDet's GFL decoding and per-class NMS in
  numpy, the latency from the frame's arrival to its detections, detection lines as JSON to an
  output thread that appends them to a file;
* the main thread rewriting a metrics file every 0.5 s in the runtime's shape (frames decoded,
  inferred and dropped, latency p50/p95 by nearest rank over the last 1024 frames, each
  camera's state), until SIGTERM or SIGINT.

A camera that fails or ends is fatal here (exit 1): the bench measures steady streams only.
"""
import argparse
import collections
import json
import os
import queue
import signal
import sys
import threading
import time
import tomllib

import numpy as np
import onnxruntime

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import Gst, GstApp  # noqa: E402,F401

POLL_S = 0.2
LATENCY_WINDOW = 1024


class Model:
    """The manifest's model in a session, with its preprocessing and decoder."""

    def __init__(self, manifest_path, threads):
        with open(manifest_path, "rb") as f:
            self.m = tomllib.load(f)
        inp = self.m["input"]
        assert inp["layout"] == "nchw", "the peer handles NCHW models only"
        _, _, self.h, self.w = inp["shape"]
        self.input_name = inp["name"]
        self.bgr = inp["colour_order"] == "bgr"
        self.mean = np.array(inp["mean"], dtype=np.float32)
        self.inv_std = (1.0 / np.array(inp["std"], dtype=np.float64)).astype(np.float32)
        d = self.m["decoder"]
        self.bins = d["reg_max"] + 1
        self.thr = d["score_threshold"]
        self.nms_iou = d["nms_iou"]
        self.max_det = d["max_detections"]
        self.levels = d["levels"]
        self.names = self.m["classes"]["names"]
        self.bin_index = np.arange(self.bins, dtype=np.float32)
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # As the runtime: no memory pattern (it saves about 20 MB at the same speed).
        opts.enable_mem_pattern = False
        model = os.path.join(os.path.dirname(os.path.abspath(manifest_path)), self.m["model"]["file"])
        self.session = onnxruntime.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def resize(self, rgb):
        """Bilinear, half-pixel centres, edges clamped, in float32 (the manifest's `bilinear`)."""
        h, w, _ = rgb.shape

        def axis(n_out, n_in):
            s = np.clip((np.arange(n_out, dtype=np.float32) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
            i0 = np.floor(s).astype(np.intp)
            return i0, np.minimum(i0 + 1, n_in - 1), (s - i0).astype(np.float32)

        y0, y1, fy = axis(self.h, h)
        x0, x1, fx = axis(self.w, w)
        src = rgb.astype(np.float32)
        fx = fx[None, :, None]
        top = src[y0][:, x0] + (src[y0][:, x1] - src[y0][:, x0]) * fx
        bottom = src[y1][:, x0] + (src[y1][:, x1] - src[y1][:, x0]) * fx
        return top + (bottom - top) * fy[:, None, None]

    def preprocess(self, rgb):
        x = rgb.astype(np.float32) if rgb.shape[:2] == (self.h, self.w) else self.resize(rgb)
        if self.bgr:
            x = x[..., ::-1]
        x = (x - self.mean) * self.inv_std
        return np.ascontiguousarray(x.transpose(2, 0, 1))[None]

    def decode(self, out, frame_w, frame_h):
        boxes, scores, labels = [], [], []
        for level in self.levels:
            s = level["stride"]
            cls = out[level["scores"]][0]
            cell, klass = np.nonzero(cls > self.thr)
            if cell.size == 0:
                continue
            cells, back = np.unique(cell, return_inverse=True)
            logits = out[level["boxes"]][0][cells].reshape(-1, 4, self.bins)
            e = np.exp(logits - logits.max(-1, keepdims=True))
            dist = (e * self.bin_index).sum(-1) / e.sum(-1) * s
            cols = -(-self.w // s)
            cx = (cells % cols + 0.5) * s
            cy = (cells // cols + 0.5) * s
            b = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], 1)
            b = np.clip(b, 0, [self.w, self.h, self.w, self.h])
            boxes.append(b[back])
            scores.append(cls[cell, klass])
            labels.append(klass)
        if not boxes:
            return []
        b, sc, lab = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        keep = []
        for k in np.unique(lab):
            idx = np.nonzero(lab == k)[0]
            idx = idx[np.argsort(-sc[idx], kind="stable")]
            while idx.size:
                i, rest = idx[0], idx[1:]
                keep.append(i)
                iw = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
                ih = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
                inter = iw * ih
                idx = rest[inter / (area[i] + area[rest] - inter) <= self.nms_iou]
        keep.sort(key=lambda i: -sc[i])
        sx, sy = frame_w / self.w, frame_h / self.h
        return [
            (self.names[int(lab[i])], float(sc[i]),
             [float(b[i, 0] * sx), float(b[i, 1] * sy), float(b[i, 2] * sx), float(b[i, 3] * sy)])
            for i in keep[: self.max_det]
        ]

    def detect(self, rgb):
        res = self.session.run(self.outputs, {self.input_name: self.preprocess(rgb)})
        return self.decode(dict(zip(self.outputs, res)), rgb.shape[1], rgb.shape[0])


def read_ppm(path):
    with open(path, "rb") as f:
        parts = f.read().split(maxsplit=4)
    assert parts[0] == b"P6" and parts[3] == b"255", f"{path}: not a binary 8-bit PPM"
    w, h = int(parts[1]), int(parts[2])
    return np.frombuffer(parts[4], dtype=np.uint8)[: w * h * 3].reshape(h, w, 3)


def self_test(model, manifest_path, out_path):
    """The detections on the golden frames, in reference.json's order, to `out_path`."""
    golden = os.path.join(os.path.dirname(os.path.abspath(manifest_path)), "golden")
    with open(os.path.join(golden, "reference.json")) as f:
        frames = json.load(f)["frames"]
    result = []
    for fr in frames:
        dets = model.detect(read_ppm(os.path.join(golden, fr["file"])))
        result.append({"file": fr["file"],
                       "detections": [{"label": l, "score": s, "box": b} for l, s, b in dets]})
    with open(out_path, "w") as f:
        json.dump({"frames": result}, f)


class Camera:
    """One stream: the runtime's pipeline, its counters."""

    def __init__(self, name, url, w, h, latency_ms):
        self.name, self.url, self.w, self.h = name, url, w, h
        self.decoded = self.inferred = self.dropped = 0
        self.state = "connecting"
        self.pipeline = Gst.parse_launch(
            f"rtspsrc name=src protocols=tcp latency={latency_ms} ! rtph264depay ! "
            "openh264dec ! videoconvert ! videoscale ! "
            f"video/x-raw,format=RGB,width={w},height={h} ! "
            "appsink name=sink max-buffers=1 drop=true sync=false")
        self.pipeline.get_by_name("src").set_property("location", url)
        self.sink = self.pipeline.get_by_name("sink")
        self.bus = self.pipeline.get_bus()
        self.pipeline.set_state(Gst.State.PLAYING)

    def failure(self):
        while True:
            msg = self.bus.pop()
            if msg is None:
                return None
            if msg.type == Gst.MessageType.ERROR:
                err, debug = msg.parse_error()
                return f"stream {self.url}: {err.message} ({debug})"
            if msg.type == Gst.MessageType.EOS:
                return f"stream {self.url}: end of stream"

    def frame(self, sample):
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if not ok:
            raise RuntimeError(f"stream {self.url}: mapping a frame failed")
        try:
            row = self.w * 3
            stride = (row + 3) // 4 * 4  # GStreamer pads RGB rows to 4 bytes
            data = np.frombuffer(info.data, dtype=np.uint8)
            if data.size == row * self.h:
                return data.reshape(self.h, self.w, 3).copy()
            return data[: stride * self.h].reshape(self.h, stride)[:, :row].reshape(self.h, self.w, 3).copy()
        finally:
            buf.unmap(info)


class Service:
    def __init__(self, model, urls, latency_ms, metrics_path, detections_path):
        self.model = model
        self.metrics_path = metrics_path
        self.stop = threading.Event()
        self.error = None
        self.cameras = [Camera(f"cam{i}", u, model.w, model.h, latency_ms) for i, u in enumerate(urls)]
        self.jobs = queue.Queue(maxsize=2 * len(urls))
        self.lines = queue.Queue(maxsize=256)
        self.lines_dropped = 0
        self.latencies = collections.deque(maxlen=LATENCY_WINDOW)
        self.lock = threading.Lock()
        self.out = open(detections_path, "w")

    def fail(self, why):
        self.error = self.error or why
        self.stop.set()

    def camera_thread(self, i):
        cam = self.cameras[i]
        seq = 0
        while not self.stop.is_set():
            why = cam.failure()
            if why:
                return self.fail(why)
            sample = cam.sink.try_pull_sample(int(POLL_S * Gst.SECOND))
            if sample is None:
                if cam.sink.is_eos():
                    return self.fail(f"stream {cam.url}: end of stream")
                continue
            rgb = cam.frame(sample)
            cam.state = "streaming"
            cam.decoded += 1
            seq += 1
            job = (i, rgb, int(time.time() * 1000), seq, time.monotonic())
            try:
                self.jobs.put_nowait(job)
            except queue.Full:
                cam.dropped += 1

    def inference_thread(self):
        while not self.stop.is_set():
            try:
                i, rgb, unix_ms, seq, decoded = self.jobs.get(timeout=POLL_S)
            except queue.Empty:
                continue
            dets = self.model.detect(rgb)
            ms = (time.monotonic() - decoded) * 1000.0
            with self.lock:
                self.latencies.append(ms)
            cam = self.cameras[i]
            cam.inferred += 1
            for label, score, box in dets:
                line = json.dumps({"camera": cam.name, "time_ms": unix_ms, "frame": seq,
                                   "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                                   "label": label, "score": score, "box": box}) + "\n"
                try:
                    self.lines.put_nowait(line)
                except queue.Full:
                    self.lines_dropped += 1

    def output_thread(self):
        while not self.stop.is_set():
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.out.write(line)
            self.out.flush()

    def metrics(self):
        with self.lock:
            lat = sorted(self.latencies)

        def q(p):
            if not lat:
                return None
            return lat[min(max(int(np.ceil(p * len(lat))), 1), len(lat)) - 1]

        cams = [{"name": c.name, "state": c.state, "stalls": 0, "decoded": c.decoded,
                 "inferred": c.inferred, "dropped": c.dropped} for c in self.cameras]
        return {
            "updated_unix_ms": int(time.time() * 1000),
            "frames": {k: sum(c[k] for c in cams) for k in ("decoded", "inferred", "dropped")},
            "latency_ms": {"p50": q(0.5), "p95": q(0.95), "samples": len(lat)},
            "cameras": cams,
            "output": {"lines_dropped": self.lines_dropped},
        }

    def write_metrics(self):
        tmp = self.metrics_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.metrics(), f)
        os.replace(tmp, self.metrics_path)

    def run(self):
        threads = [threading.Thread(target=self.camera_thread, args=(i,), name=f"camera-{i}")
                   for i in range(len(self.cameras))]
        threads += [threading.Thread(target=self.inference_thread, name="inference"),
                    threading.Thread(target=self.output_thread, name="output")]
        for t in threads:
            t.start()
        while not self.stop.is_set():
            self.write_metrics()
            self.stop.wait(0.5)
        for t in threads:
            t.join()
        self.write_metrics()
        for c in self.cameras:
            c.pipeline.set_state(Gst.State.NULL)
        self.out.close()
        if self.error:
            sys.exit(f"runtime_peer: {self.error}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True)
    p.add_argument("--golden", required=True, help="where the self-test's detections go")
    p.add_argument("--metrics", required=True)
    p.add_argument("--detections", required=True)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--latency-ms", type=int, default=200, help="rtspsrc's jitter buffer")
    p.add_argument("urls", nargs="+")
    a = p.parse_args()
    model = Model(a.manifest, a.threads)
    self_test(model, a.manifest, a.golden)
    Gst.init(None)
    service = Service(model, a.urls, a.latency_ms, a.metrics, a.detections)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop.set())
    print(f"runtime_peer: onnxruntime {onnxruntime.__version__}, numpy {np.__version__}, "
          f"{len(a.urls)} cameras", file=sys.stderr, flush=True)
    service.run()


if __name__ == "__main__":
    main()
