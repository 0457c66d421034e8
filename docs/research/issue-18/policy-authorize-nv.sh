#!/bin/bash
# The recommended disk-key policy, end to end on swtpm (each "boot" restarts swtpm: PCRs reset,
# NV and seeds kept):
#   sealed object authPolicy = PolicyAuthorize(build policy key, ref) ; PolicyPCR(7 = value at seal)
#   approved policy per UKI   = PolicyPCR(11 = that UKI's predicted value) ; PolicyNV(floor <= its sv)
# usage: policy-authorize-nv.sh UKI_V1.efi UKI_V2.efi UKI_EDITED.efi WORKDIR
# (UKI_EDITED: v2 with another command line, e.g. init=/bin/sh, as if signed by mistake)
set -euo pipefail
here=$(dirname "$(realpath "$0")")
v1=$(realpath "$1") v2=$(realpath "$2") v3=$(realpath "$3") w=$(realpath -m "$4")
[ -f "$w/swtpm.pid" ] && kill "$(cat "$w/swtpm.pid")" 2>/dev/null && sleep 0.3
rm -rf "$w"; mkdir -p "$w/tpm"; cd "$w"
trap '[ -f "$w/swtpm.pid" ] && kill "$(cat "$w/swtpm.pid")" 2>/dev/null' EXIT
export TPM2TOOLS_TCTI=swtpm:port=2421
IDX=0x01500A70 REF=aperture-disk-v1
boot() { # a power cycle of the TPM: PCRs back to 0; then what firmware + stub would extend
  [ -f swtpm.pid ] && { kill "$(cat swtpm.pid)"; sleep 0.3; }
  swtpm socket --tpm2 --tpmstate dir="$w/tpm" --server type=tcp,port=2421 --ctrl type=tcp,port=2422 \
    --flags startup-clear --daemon --pid file="$w/swtpm.pid"; sleep 0.3
  tpm2 pcrextend "7:sha256=$(printf '%s' "$1" | sha256sum | cut -c1-64)"   # stands for firmware's PCR 7 events
  for d in $("$here"/pcr11-predict.py --events "$2"); do tpm2 pcrextend "11:sha256=$d"; done
}
say() { printf '\n## %s\n' "$*"; }

say "build host: the policy signing key (kept with the Secure Boot keys)"
openssl genrsa -out policy.key 2048 2>/dev/null; openssl rsa -in policy.key -pubout -out policy.pub.pem 2>/dev/null
printf "%s" "$REF" > ref.bin
for n in 1 2; do printf "%016x" $n | xxd -r -p > sv$n.bin; done   # PolicyNV operandB: 8 bytes big-endian
approve() { # UKI SV NAME: offline approved policy + RSASSA-SHA256 signature over it || ref
  "$here"/policy-digest.py approved "$("$here"/pcr11-predict.py "$1" | awk '/^base/ {print $2}')" $IDX "$2" > "$3.policy"
  cat "$3.policy" ref.bin | openssl dgst -sha256 -sign policy.key -out "$3.sig"
  echo "$3: approved policy $(xxd -p -c 64 "$3.policy") (sv $2)"
}
approve "$v1" 1 v1; approve "$v2" 2 v2

say "device, first boot of v1 (SB on, our db): floor counter defined and set to 1, key sealed"
boot secureboot-on-our-db "$v1"
tpm2 nvdefine $IDX -C o -s 8 -a "nt=counter|ownerread|ownerwrite|authread|authwrite|no_da" >/dev/null
tpm2 nvincrement -C o $IDX; echo "floor counter = $(tpm2 nvread -C o -s 8 $IDX | xxd -p)"
echo "NV name: TPM $(tpm2 nvreadpublic $IDX | awk '/name:/ {print $2}') / offline $("$here"/policy-digest.py nvname $IDX)"
prim() { tpm2 createprimary -Q -C o -c prim.ctx -a 'restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda'; tpm2 flushcontext -t; }
prim
tpm2 loadexternal -Q -C o -G rsa -u policy.pub.pem -c pk.ctx -n pk.name; tpm2 flushcontext -t
tpm2 pcrread -Q sha256:7 -o pcr7.now
tpm2 startauthsession -Q -S trial.ctx
tpm2 policyauthorize -Q -S trial.ctx -n pk.name -q ref.bin
tpm2 policypcr -Q -S trial.ctx -l sha256:7 -f pcr7.now -L seal.policy
tpm2 flushcontext trial.ctx
printf 'disk-key-42' | tpm2 create -Q -C prim.ctx -L seal.policy -a 'fixedtpm|fixedparent|noda' -i - -u seal.pub -r seal.priv
tpm2 flushcontext -t; echo "sealed; authPolicy $(xxd -p -c 64 seal.policy)"

# check the offline approved digest against a trial session on the real TPM
tpm2 pcrread -Q sha256:11 -o pcr11.now
tpm2 startauthsession -Q -S trial.ctx
tpm2 policypcr -Q -S trial.ctx -l sha256:11 -f pcr11.now
tpm2 policynv -Q -S trial.ctx -C o -L trial.policy -i sv1.bin $IDX ule
tpm2 flushcontext trial.ctx
cmp -s trial.policy v1.policy && echo "offline approved policy == TPM trial session: yes" || echo "offline approved policy MISMATCH"

unseal() { # NAME: the boot's UKI policy signature, as aperture-storage would run it
  local n=$1 sv=$2
  prim
  tpm2 loadexternal -Q -C o -G rsa -u policy.pub.pem -c pk.ctx -n pk.name; tpm2 flushcontext -t
  cat "$n.policy" ref.bin > msg.bin
  if ! tpm2 verifysignature -Q -c pk.ctx -g sha256 -m msg.bin -s "$n.sig" -f rsassa -t ticket.tkt 2>/dev/null; then
    echo "RESULT: refused (policy signature invalid)"; tpm2 flushcontext -t; return; fi
  tpm2 load -Q -C prim.ctx -u seal.pub -r seal.priv -c seal.ctx; tpm2 flushcontext -t
  tpm2 startauthsession -Q --policy-session -S s.ctx
  local ok=1
  tpm2 policypcr -Q -S s.ctx -l sha256:11 2>/dev/null || ok=0
  tpm2 policynv -Q -S s.ctx -C o -i "sv$sv.bin" $IDX ule 2>/dev/null || { echo "  (PolicyNV failed: floor above sv $sv)"; ok=0; }
  tpm2 policyauthorize -Q -S s.ctx -i "$n.policy" -q ref.bin -n pk.name -t ticket.tkt 2>/dev/null || { echo "  (PolicyAuthorize failed: session digest is not the approved policy)"; ok=0; }
  tpm2 policypcr -Q -S s.ctx -l sha256:7 2>/dev/null || ok=0
  if [ $ok = 1 ] && s=$(tpm2 unseal -c seal.ctx -p session:s.ctx 2>err.txt); then echo "RESULT: unsealed '$s'"
  else echo "RESULT: refused $(grep -o 'ErrorCode ([0-9a-fx]*)' err.txt 2>/dev/null | head -1)"; fi
  tpm2 flushcontext s.ctx 2>/dev/null || true; tpm2 flushcontext -t; rm -f err.txt
}

say "boot v1 with v1's signed policy"; boot secureboot-on-our-db "$v1"; unseal v1 1
say "same boot, after the barrier extend of PCR 11 (what aperture-storage does once unsealed)"
tpm2 pcrextend "11:sha256=$(printf aperture-storage-done | sha256sum | cut -c1-64)"; unseal v1 1
say "OTA: boot v2 with v2's signed policy (nothing re-sealed)"; boot secureboot-on-our-db "$v2"; unseal v2 2
say "v2 commits: floor counter raised to 2"; tpm2 nvincrement -C o $IDX; echo "floor counter = $(tpm2 nvread -C o -s 8 $IDX | xxd -p)"
say "after commit, v2 still unseals"; boot secureboot-on-our-db "$v2"; unseal v2 2
say "rollback: v1 (signed by us, sv 1 < floor 2) with its own signed policy"; boot secureboot-on-our-db "$v1"; unseal v1 1
say "rollback: v1 booted, presenting v2's signed policy"; unseal v2 2
say "v2 with an edited command line (other PCR 11) presenting v2's policy"; boot secureboot-on-our-db "$v3"; unseal v2 2
say "Secure Boot off (PCR 7 differs), v2 and its policy"; boot secureboot-off "$v2"; unseal v2 2
say "a forged policy signature (v2's policy, signature byte flipped)"; boot secureboot-on-our-db "$v2"
cp v2.sig v2.sig.good; printf '\x00' | dd of=v2.sig bs=1 seek=10 conv=notrunc status=none; unseal v2 2; mv v2.sig.good v2.sig
kill "$(cat swtpm.pid)"
