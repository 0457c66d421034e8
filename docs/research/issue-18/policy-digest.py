#!/usr/bin/env python3
"""Offline TPM 2.0 policy digests (sha256), what the image builder needs to compute a UKI's
approved policy without a TPM. Checked against tpm2-tools trial sessions in policy-authorize-nv.sh.
  policy-digest.py approved PCR11_HEX INDEX SECURITY_VERSION   -> PolicyPCR(11) then PolicyNV(counter <= sv)
  policy-digest.py nvname INDEX                                -> Name of the floor counter (written)
"""
import hashlib, struct, sys
H = lambda *p: hashlib.sha256(b''.join(p)).digest()
CC_PolicyPCR, CC_PolicyNV = 0x17F, 0x149
EO_UNSIGNED_LE = 0x0009
# device/updater/src/tpm.rs ATTRIBUTES: nt=counter|ownerread|ownerwrite|authread|authwrite|no_da, plus WRITTEN
NV_ATTRS = 0x10 | 0x2 | 0x4 | 0x20000 | 0x40000 | 0x2000000 | 0x20000000

def pcr_selection(pcrs):
    bitmap = bytearray(3)
    for p in pcrs: bitmap[p // 8] |= 1 << (p % 8)
    return struct.pack('>IHB', 1, 0x000B, 3) + bytes(bitmap)

def policy_pcr(old, pcrs, values):
    return H(old, struct.pack('>I', CC_PolicyPCR), pcr_selection(pcrs), H(*values))

def nv_name(index, attrs=NV_ATTRS, size=8):
    pub = struct.pack('>IHIHH', index, 0x000B, attrs, 0, size)   # empty authPolicy
    return struct.pack('>H', 0x000B) + H(pub)

def policy_nv(old, index, operand, offset, op):
    args = H(operand, struct.pack('>HH', offset, op))
    return H(old, struct.pack('>I', CC_PolicyNV), args, nv_name(index))

if __name__ == '__main__':
    if sys.argv[1] == 'nvname':
        print(nv_name(int(sys.argv[2], 0)).hex())
    elif sys.argv[1] == 'approved':
        pcr11, index, sv = bytes.fromhex(sys.argv[2]), int(sys.argv[3], 0), int(sys.argv[4])
        d = policy_pcr(bytes(32), [11], [pcr11])
        d = policy_nv(d, index, struct.pack('>Q', sv), 0, EO_UNSIGNED_LE)
        sys.stdout.buffer.write(d)
