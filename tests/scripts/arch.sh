# The machine and the ELF machine of the updater (bytes 18-19: 0xb7 0x00 is EM_AARCH64).
echo "APERTURE-ARCH $(uname -m) e_machine=$(od -An -tx1 -j18 -N2 /usr/bin/aperture-update | tr -d ' ')"
