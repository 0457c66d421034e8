#!/usr/bin/python3
"""Aperture's reference inference runtime.

Classifies camera frames with a small fixed network and reports liveness and throughput in
/run/aperture/runtime.json. A product replaces the model and the frame source; the contract
stays: a systemd service of Type=notify that says READY=1 once it has run its first inference,
which the health gate checks before a new slot is marked good.
"""

import json
import os
import socket
import time

import numpy as np

SIZE = 64
LABELS = ["empty", "person", "vehicle", "other"]
STATE = "/run/aperture/runtime.json"


def notify(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.send(message.encode())


def frame(t: int) -> np.ndarray:
    """A synthetic frame: a gradient with an object moving across it."""
    img = np.linspace(0.0, 1.0, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    x = (t * 3) % (SIZE - 8)
    img[20:28, x : x + 8] += 1.0
    return img


def main() -> None:
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((SIZE * SIZE, 32)).astype(np.float32) / SIZE
    w2 = rng.standard_normal((32, len(LABELS))).astype(np.float32)
    os.makedirs(os.path.dirname(STATE), exist_ok=True)
    frames = 0
    start = time.monotonic()
    counts = {label: 0 for label in LABELS}
    while True:
        hidden = np.maximum(frame(frames).reshape(-1) @ w1, 0.0)
        label = LABELS[int(np.argmax(hidden @ w2))]
        counts[label] += 1
        frames += 1
        if frames == 1:
            notify("READY=1")
        if frames % 5 == 1:
            state = {
                "frames": frames,
                "fps": round(frames / max(time.monotonic() - start, 1e-6), 2),
                "last_label": label,
                "counts": counts,
            }
            tmp = STATE + ".tmp"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, STATE)
            notify(f"STATUS=frames={frames} last={label}")
        time.sleep(1.0)


if __name__ == "__main__":
    main()
