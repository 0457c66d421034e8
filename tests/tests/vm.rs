//! Tier 3: QEMU boots of built images.
