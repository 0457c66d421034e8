#!/bin/sh
# Seal SECRET to "PCR 7 == EXPECTED" under the owner primary (noda templates as
# device/storage/src/keys.rs), against a TPM reachable as $TPM2TOOLS_TCTI.
# usage: seal-pcr7.sh EXPECTED_PCR7_HEX SECRET OUTDIR   -> OUTDIR/seal.pub, seal.priv, pcr7.policy
set -eu
expected=$1 secret=$2 out=$3
mkdir -p "$out"; cd "$out"
echo "$expected" | xxd -r -p > pcr7.bin                       # the value the firmware will leave
tpm2 createpolicy -Q --policy-pcr -l sha256:7 -f pcr7.bin -L pcr7.policy
tpm2 createprimary -Q -C o -c prim.ctx -a 'restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda'
# No `userwithauth`: with it, the empty password would unseal and bypass the policy.
printf '%s' "$secret" | tpm2 create -Q -C prim.ctx -L pcr7.policy -a 'fixedtpm|fixedparent|noda' -i - -u seal.pub -r seal.priv
tpm2 flushcontext -t
echo "policy digest: $(xxd -p -c 64 pcr7.policy)"
