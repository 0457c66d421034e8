#!/usr/bin/env python3
"""The independent reference for the runtime's golden test (device/runtime/tests/golden.rs).

Writes, beside this file:
  *.ppm            with --frames: the golden frames, scikit-image's bundled photographs halved
                   (RGB8, binary PPM); without it the committed frames are read
  reference.json   for each frame: summaries and sampled values of the model's six raw output
                   tensors, and the final detections, as computed here

Everything between the frame and the detections is written here again, in numpy, from the
model manifest's description (../manifest.toml) and upstream NanoDet's GFL head
(RangiLyu/nanodet, nanodet/model/head/gfl_head.py: centres at (i + 0.5) * stride, softmax over
reg_max + 1 bins, distances times the stride, per-class NMS), not translated from the Rust
crate, and the model runs in the onnxruntime Python package, another build and version than the
library the Rust side loads. The Rust test compares its own preprocessing, inference and
decoding against this file.

Not run in CI. To regenerate (pinned versions):
  python3 -m venv /tmp/ref && /tmp/ref/bin/pip install onnxruntime==1.32.0 numpy==1.26.4 \
      scikit-image==0.26.0 pillow==13.0.0
  /tmp/ref/bin/python models/nanodet-m/golden/reference.py [--frames]
"""
import json
import os
import sys
import tomllib

import numpy as np
import onnxruntime
import skimage
import PIL
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.dirname(HERE)
# name in skimage.data -> golden frame file
FRAMES = [("astronaut", "astronaut.ppm"), ("coffee", "coffee.ppm"), ("stereo_motorcycle", "motorcycle.ppm")]
SAMPLES_PER_OUTPUT = 32


def write_ppm(path, rgb):
    h, w, _ = rgb.shape
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (w, h))
        f.write(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())


def read_ppm(path):
    data = open(path, "rb").read()
    parts = data.split(maxsplit=4)
    assert parts[0] == b"P6" and parts[3] == b"255"
    w, h = int(parts[1]), int(parts[2])
    return np.frombuffer(parts[4], dtype=np.uint8)[: w * h * 3].reshape(h, w, 3)


def make_frames():
    """Halve each photograph (Lanczos, PIL): small fixtures, and a resize for the runtime to do."""
    for name, file in FRAMES:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity); the left view
            img = img[0]
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = img[..., :3]
        half = Image.fromarray(img).resize((img.shape[1] // 2, img.shape[0] // 2), Image.LANCZOS)
        write_ppm(os.path.join(HERE, file), np.asarray(half))


def resize_bilinear(rgb, out_w, out_h):
    """Bilinear with half-pixel centres, no antialiasing, edges clamped (the manifest's
    `resize = "bilinear"`): output pixel (x, y) samples the input at ((x + 0.5) * W / w - 0.5,
    (y + 0.5) * H / h - 0.5). Float result, no rounding back to 8 bits."""
    h, w, _ = rgb.shape
    src = rgb.astype(np.float64)

    def axis(n_out, n_in):
        s = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        s = np.clip(s, 0, n_in - 1)
        i0 = np.floor(s).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, s - i0

    y0, y1, fy = axis(out_h, h)
    x0, x1, fx = axis(out_w, w)
    top = src[y0][:, x0] * (1 - fx)[None, :, None] + src[y0][:, x1] * fx[None, :, None]
    bot = src[y1][:, x0] * (1 - fx)[None, :, None] + src[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def preprocess(rgb, m):
    inp = m["input"]
    n, c, h, w = inp["shape"]
    assert inp["layout"] == "nchw" and inp["colour_order"] == "bgr"
    x = resize_bilinear(rgb, w, h)[..., ::-1]  # RGB -> BGR
    x = (x - np.array(inp["mean"])) / np.array(inp["std"])
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def softmax(v):
    e = np.exp(v - v.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def iou(a, b):
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])
    return inter / (area(a) + area(b) - inter)


def decode(outputs, m, frame_w, frame_h):
    d = m["decoder"]
    _, _, in_h, in_w = m["input"]["shape"]
    bins = d["reg_max"] + 1
    thr = d["score_threshold"]
    boxes, scores, labels, margins = [], [], [], []
    for level in d["levels"]:
        s = level["stride"]
        cls = outputs[level["scores"]][0]
        reg = outputs[level["boxes"]][0].reshape(-1, 4, bins)
        gw = -(-in_w // s)
        cells = np.arange(cls.shape[0])
        cx = (cells % gw + 0.5) * s
        cy = (cells // gw + 0.5) * s
        dist = (softmax(reg.astype(np.float64)) * np.arange(bins)).sum(-1) * s
        b = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], 1)
        b = np.clip(b, 0, [in_w, in_h, in_w, in_h])
        margins.append(np.abs(cls - thr).min())
        cell, klass = np.nonzero(cls > thr)
        boxes.append(b[cell])
        scores.append(cls[cell, klass])
        labels.append(klass)
    b, sc, lab = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
    keep, iou_margin = [], 1.0
    for k in np.unique(lab):
        idx = np.nonzero(lab == k)[0]
        idx = idx[np.argsort(-sc[idx], kind="stable")]
        while idx.size:
            i = idx[0]
            keep.append(i)
            o = iou(b[i], b[idx[1:]])
            if o.size:
                iou_margin = min(iou_margin, float(np.abs(o - d["nms_iou"]).min()))
            idx = idx[1:][o <= d["nms_iou"]]
    keep = sorted(keep, key=lambda i: -sc[i])[: d["max_detections"]]
    sx, sy = frame_w / in_w, frame_h / in_h
    dets = [
        {
            "label": m["classes"]["names"][int(lab[i])],
            "score": float(sc[i]),
            "box": [float(b[i, 0] * sx), float(b[i, 1] * sy), float(b[i, 2] * sx), float(b[i, 3] * sy)],
        }
        for i in keep
    ]
    return dets, float(min(margins)), iou_margin


def summarise(name, t):
    flat = t.astype(np.float64).ravel()
    idx = [(k * flat.size) // SAMPLES_PER_OUTPUT + (k * 37) % 11 for k in range(SAMPLES_PER_OUTPUT)]
    idx.append(int(flat.argmax()))
    return {
        "name": name,
        "shape": list(t.shape),
        "sum": float(flat.sum()),
        "sum_abs": float(np.abs(flat).sum()),
        "min": float(flat.min()),
        "max": float(flat.max()),
        "samples": [[i, float(flat[i])] for i in idx],
    }


def main():
    m = tomllib.load(open(os.path.join(MODEL_DIR, "manifest.toml"), "rb"))
    if "--frames" in sys.argv:
        make_frames()
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = onnxruntime.InferenceSession(os.path.join(MODEL_DIR, m["model"]["file"]), opts,
                                        providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out = {
        "generated_by": "models/nanodet-m/golden/reference.py",
        "versions": {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                     "scikit-image": skimage.__version__, "pillow": PIL.__version__},
        "model_sha256": m["model"]["sha256"],
        "frames": [],
    }
    for _, file in FRAMES:
        rgb = read_ppm(os.path.join(HERE, file))
        x = preprocess(rgb, m)
        res = dict(zip(names, sess.run(None, {m["input"]["name"]: x})))
        dets, score_margin, iou_margin = decode(res, m, rgb.shape[1], rgb.shape[0])
        print(file, rgb.shape, f"score margin {score_margin:.2e}, IoU margin {iou_margin:.2e}")
        for det in dets:
            print("   ", det["label"], round(det["score"], 3), [round(v, 1) for v in det["box"]])
        out["frames"].append({
            "file": file,
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
            "input": summarise(m["input"]["name"], x),
            "outputs": [summarise(n, res[n]) for n in sorted(names)],
            "detections": dets,
            # How far the nearest score is from the threshold and the nearest IoU from the NMS
            # limit: the tolerances of the Rust test must stay below these, or a rounding
            # difference could flip a decision.
            "score_margin": score_margin,
            "iou_margin": iou_margin,
        })
    with open(os.path.join(HERE, "reference.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
