# Install the model bundles the host offers through fw_cfg: a good one, then, once the runtime
# runs it, a bad one (its golden reference disagrees with the model), whose self-test fails at
# the restart, so the runtime switches back to the good one and records the rejection.
cfg=/sys/firmware/qemu_fw_cfg/by_name/opt/aperture
cp "$cfg/good.model/raw" /run/good.model
aperture-runtime model install /run/good.model && echo "MODEL-INSTALLED good"
for _ in $(seq 300); do grep -q '"source": "store"' /run/aperture/runtime.json 2>/dev/null && break; sleep 2; done
cp "$cfg/bad.model/raw" /run/bad.model
aperture-runtime model install /run/bad.model && echo "MODEL-INSTALLED bad"
aperture-runtime model status
sleep 3600
