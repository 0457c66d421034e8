#!/bin/sh
# Runs in the probe initramfs: unseal the blob QEMU passed through fw_cfg with the PCR 7 policy
# (the same commands aperture-storage would run; the TPM is /dev/tpmrm0).
export TPM2TOOLS_TCTI=device:/dev/tpmrm0
f=/sys/firmware/qemu_fw_cfg/by_name/opt/r18
cd /tmp
cat $f/pub/raw > seal.pub; cat $f/priv/raw > seal.priv
tpm2 createprimary -Q -C o -c prim.ctx -a 'restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda'
tpm2 load -Q -C prim.ctx -u seal.pub -r seal.priv -c seal.ctx
tpm2 startauthsession -Q --policy-session -S sess.ctx
tpm2 policypcr -Q -S sess.ctx -l sha256:7
if s=$(tpm2 unseal -c seal.ctx -p session:sess.ctx 2>/tmp/err); then echo "MARK unseal=ok secret=$s"; else echo "MARK unseal=refused $(grep -o 'ErrorCode.*' /tmp/err | head -1)"; fi
tpm2 flushcontext sess.ctx
