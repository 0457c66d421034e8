#!/usr/bin/env python3
"""Set a PE file's COFF TimeDateStamp (objcopy writes the current time) and recompute the
optional header's CheckSum, in place. usage: pe-fix-timestamp.py FILE [EPOCH=0]"""
import struct, sys
path = sys.argv[1]; epoch = int(sys.argv[2]) if len(sys.argv) > 2 else 0
b = bytearray(open(path, 'rb').read())
pe = struct.unpack_from('<I', b, 0x3c)[0]
assert b[pe:pe+4] == b'PE\0\0'
struct.pack_into('<I', b, pe + 8, epoch)          # COFF header: TimeDateStamp
ck = pe + 24 + 64                                  # optional header: CheckSum (PE32 and PE32+)
struct.pack_into('<I', b, ck, 0)
s = 0
if len(b) % 2: b.append(0); trimmed = True
else: trimmed = False
for (w,) in struct.iter_unpack('<H', b):
    s += w; s = (s & 0xffff) + (s >> 16)
if trimmed: b.pop()
struct.pack_into('<I', b, ck, (s & 0xffff) + len(b))
open(path, 'wb').write(b)
