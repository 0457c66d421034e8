"""`cargo xtask bench fleet-repo`'s python-tuf peer: simulated devices polling a TUF repository
with python-tuf's ngclient (the reference TUF client), as the Rust side polls it with
Aperture's client and with stock tough.

Each device keeps its own metadata folder (DEVICES_DIR/N/metadata, seeded with the shipped
root on its first poll) and makes one `Updater(...).refresh()` per poll, with the stock
urllib3 fetcher (a new connection per poll, as a device that polls every few minutes makes).
The test CA comes from SSL_CERT_FILE, which urllib3's default TLS context reads. WORKERS
processes take devices 0, 1, 2, ... in order until DEVICES are polled or SECONDS have passed
(a device is only taken before the deadline, so the devices polled are always the first ones).

One phase per run; prints one JSON line: polls, failures, the first error, the requests and
body bytes the fetchers counted, and the seconds the phase took.
"""

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time

import tuf
from tuf.ngclient import Updater, Urllib3Fetcher


class CountingFetcher(Urllib3Fetcher):
    """The stock fetcher, counting requests and body bytes."""

    def __init__(self):
        super().__init__()
        self.requests = 0
        self.bytes = 0

    def _fetch(self, url):
        self.requests += 1
        return self._counted(super()._fetch(url))

    def _counted(self, chunks):
        for chunk in chunks:
            self.bytes += len(chunk)
            yield chunk


def poll(args, i):
    """One poll of device `i`: (requests, body bytes, error or None)."""
    metadata = os.path.join(args.devices_dir, str(i), "metadata")
    if not os.path.exists(os.path.join(metadata, "root.json")):
        os.makedirs(metadata, exist_ok=True)
        shutil.copyfile(args.root, os.path.join(metadata, "root.json"))
    fetcher = CountingFetcher()
    try:
        updater = Updater(
            metadata,
            args.metadata_url,
            target_base_url=args.targets_url,
            fetcher=fetcher,
            bootstrap=None,
        )
        updater.refresh()
        error = None
    except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
        error = f"device {i}: {type(e).__name__}: {e}"
    return fetcher.requests, fetcher.bytes, error


def work(args, counter, deadline, out):
    totals = {"polls": 0, "failures": 0, "requests": 0, "bytes": 0, "error": None}
    while time.time() < deadline:
        with counter.get_lock():
            i = counter.value
            if i >= args.devices:
                break
            counter.value += 1
        requests, nbytes, error = poll(args, i)
        totals["polls"] += 1
        totals["requests"] += requests
        totals["bytes"] += nbytes
        if error is not None:
            totals["failures"] += 1
            totals["error"] = totals["error"] or error
    out.put(totals)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metadata-url", required=True)
    p.add_argument("--targets-url", required=True)
    p.add_argument("--root", required=True, help="the shipped root (1.root.json)")
    p.add_argument("--devices-dir", required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seconds", type=float, required=True, help="time limit of the phase")
    args = p.parse_args()

    started = time.time()
    deadline = started + args.seconds
    counter = multiprocessing.Value("q", 0)
    out = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=work, args=(args, counter, deadline, out))
        for _ in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    seconds = time.time() - started
    try:
        import cryptography  # noqa: F401 - securesystemslib verifies with it when present

        crypto = "pyca/cryptography"
    except ImportError:
        crypto = "pure-Python ed25519"
    summary = {
        "tuf": tuf.__version__,
        "crypto": crypto,
        "polls": sum(r["polls"] for r in results),
        "failures": sum(r["failures"] for r in results),
        "requests": sum(r["requests"] for r in results),
        "bytes": sum(r["bytes"] for r in results),
        "error": next((r["error"] for r in results if r["error"]), None),
        "seconds": seconds,
    }
    json.dump(summary, sys.stdout)
    print()


if __name__ == "__main__":
    main()
