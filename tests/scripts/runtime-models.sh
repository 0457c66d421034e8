# Install the model bundles the host offers as read-only disks (serials good-model and
# bad-model): a good one, then, once the runtime runs it, a bad one (its golden reference
# disagrees with the model), whose self-test fails at the restart, so the runtime switches back
# to the good one and records the rejection.
cat /dev/disk/by-id/virtio-good-model > /run/good.model
aperture-runtime model install /run/good.model && echo "MODEL-INSTALLED good"
for _ in $(seq 300); do grep -q '"source": "store"' /run/aperture-runtime/runtime.json 2>/dev/null && break; sleep 2; done
cat /dev/disk/by-id/virtio-bad-model > /run/bad.model
aperture-runtime model install /run/bad.model && echo "MODEL-INSTALLED bad"
aperture-runtime model status
