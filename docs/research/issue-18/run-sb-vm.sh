#!/bin/sh
# Boot one EFI binary as EFI/BOOT/BOOTX64.EFI under OVMF with Secure Boot firmware, a given
# variable store (copied, never modified), and swtpm (state in TPMSTATE, kept between runs).
# usage: run-sb-vm.sh VARS.fd BINARY.efi|ESP_DIR TPMSTATE LOG [extra qemu args...]
# (a folder is copied as the whole ESP instead)
# Prints the serial console to LOG and the wall time to each MARK line.
set -eu
vars=$1 efi=$2 tpmstate=$(realpath -m "$3") log=$4; shift 4
work=$(mktemp -d)
mkdir -p "$tpmstate"
# ESP: a GPT disk with one 64 MiB FAT32 partition at 1 MiB.
truncate -s 72M "$work/disk.img"
printf 'label: gpt\nstart=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n' | sfdisk -q "$work/disk.img"
truncate -s 64M "$work/esp.img"
mkfs.vfat -F 32 --invariant -i 12345678 "$work/esp.img" >/dev/null
if [ -d "$efi" ]; then
  MTOOLS_SKIP_CHECK=1 mcopy -s -i "$work/esp.img" "$efi"/* ::/
else
  MTOOLS_SKIP_CHECK=1 mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
  MTOOLS_SKIP_CHECK=1 mcopy -i "$work/esp.img" "$efi" ::/EFI/BOOT/BOOTX64.EFI
fi
dd if="$work/esp.img" of="$work/disk.img" bs=1M seek=1 conv=notrunc,sparse status=none
cp "$vars" "$work/vars.fd"
swtpm socket --tpm2 --tpmstate dir="$tpmstate" --ctrl type=unixio,path="$work/swtpm.sock" \
  --daemon --pid file="$work/swtpm.pid" --log file="$work/swtpm.log"
start=$(date +%s.%N)
timeout "${TIMEOUT:-300}" /usr/bin/time -f "MARK qemu-cpu user=%U sys=%S wall=%e" qemu-system-x86_64 -machine q35,smm=on,accel=tcg -cpu max,avx2=off -smp 2 -m 1024 \
  -global driver=cfi.pflash01,property=secure,value=on \
  -drive if=pflash,format=raw,unit=0,readonly=on,file=${CODE:-/usr/share/OVMF/OVMF_CODE_4M.secboot.fd} \
  -drive if=pflash,format=raw,unit=1,file="$work/vars.fd" \
  -drive if=none,id=disk0,format=raw,file="$work/disk.img" -device virtio-blk-pci,drive=disk0,bootindex=0 \
  -chardev socket,id=chrtpm,path="$work/swtpm.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0 \
  -display none -serial stdio -monitor none -no-reboot -net none "$@" 2>&1 |
  while IFS= read -r line; do
    now=$(date +%s.%N)
    printf '%s\n' "$line" >> "$log"
    case "$line" in *MARK*|*"Access Denied"*|*"Security Violation"*|*"Linux version"*|*"BdsDxe"*|*"secureboot:"*)
      printf '[%6.2fs] %s\n' "$(echo "$now - $start" | bc)" "$line" | tr -d '\r';; esac
  done
printf '[%6.2fs] qemu exited\n' "$(echo "$(date +%s.%N) - $start" | bc)"
[ -f "$work/swtpm.pid" ] && kill "$(cat "$work/swtpm.pid")" 2>/dev/null || true
[ -n "${KEEP:-}" ] || rm -rf "$work"
