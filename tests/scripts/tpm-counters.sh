# The anti-rollback floor and keyring sequence as the TPM's NV counters hold them (8 bytes,
# big-endian, in hex; "none" when the counter was never written).
for idx in 0x01500A70 0x01500A71; do
    v=$(TPM2TOOLS_TCTI=device:/dev/tpmrm0 tpm2_nvread -C o -s 8 "$idx" 2>/dev/null | od -An -tx1 | tr -d ' \n')
    echo "APERTURE-NV $idx ${v:-none}"
done
