#!/bin/sh
# Assemble a UKI from systemd-boot-efi 252's stub with objcopy (no ukify on bookworm).
# usage: build-uki.sh VMLINUZ INITRD CMDLINE_FILE OSREL_FILE OUT.efi
# Sections are placed after the stub's image, each at a 4 KiB-aligned VMA, .linux last
# (as ukify does). Timestamps: see REPORT.md (objcopy keeps the stub's TimeDateStamp 0).
set -eu
STUB=${STUB:-/usr/lib/systemd/boot/efi/linuxx64.efi.stub}
vmlinuz=$1 initrd=$2 cmdline=$3 osrel=$4 out=$5
align() { echo $(( ($1 + 4095) / 4096 * 4096 )); }
# End of the stub's image: SizeOfImage from the PE optional header.
size_of_image=$(objdump -p "$STUB" | awk '/^SizeOfImage/ {print $2}')
off=$(align $((0x$size_of_image)))
args=""
for pair in ".osrel=$osrel" ".cmdline=$cmdline" ".initrd=$initrd" ".linux=$vmlinuz"; do
  name=${pair%%=*}; file=${pair#*=}
  args="$args --add-section $name=$file --change-section-vma $name=$(printf 0x%x $off)"
  off=$(align $((off + $(stat -c %s "$file"))))
done
# shellcheck disable=SC2086
objcopy $args "$STUB" "$out"
