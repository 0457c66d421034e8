#!/usr/bin/env python3
"""Predict PCR 11 (sha256) as systemd-stub 252 leaves it, from a UKI's sections: for each of
.linux .osrel .cmdline .initrd .splash .dtb .pcrpkey present (in that order; .pcrsig is never
measured) extend sha256(name + NUL), then sha256(the section's VirtualSize bytes).
Optional phase words (enter-initrd, leave-initrd, sysinit, ready) are extended after, as
systemd-pcrphase does. usage: pcr11-predict.py UKI.efi [PHASE...]
       pcr11-predict.py --events UKI.efi   (the sha256 digests to extend, one a line)"""
import hashlib, struct, sys
events = sys.argv[1] == '--events'
if events: sys.argv.pop(1)
b = open(sys.argv[1], 'rb').read()
pe = struct.unpack_from('<I', b, 0x3c)[0]
nsec = struct.unpack_from('<H', b, pe + 6)[0]
opt_size = struct.unpack_from('<H', b, pe + 20)[0]
sec = {}
for i in range(nsec):
    o = pe + 24 + opt_size + 40 * i
    name = b[o:o+8].rstrip(b'\0').decode()
    vsize, vaddr, rawsize, rawptr = struct.unpack_from('<IIII', b, o + 8)
    sec[name] = b[rawptr:rawptr + vsize] + b'\0' * max(0, vsize - rawsize)
pcr = bytes(32)
ext = lambda p, d: hashlib.sha256(p + hashlib.sha256(d).digest()).digest()
for name in ['.linux', '.osrel', '.cmdline', '.initrd', '.splash', '.dtb', '.pcrpkey']:
    if name in sec:
        for d in (name.encode() + b'\0', sec[name]):
            if events: print(hashlib.sha256(d).hexdigest())
            pcr = ext(pcr, d)
if events: sys.exit(0)
print('base', pcr.hex())
for phase in sys.argv[2:]:
    pcr = ext(pcr, phase.encode()); print(phase, pcr.hex())
