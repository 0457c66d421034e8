#!/bin/sh
# A tiny initramfs (busybox + tpm2-tools copied from this Debian 12 host) whose /init prints
# the Secure Boot state and PCRs 4/7/9/11/12 from sysfs, then, if QEMU passed a sealed blob with
# -fw_cfg name=opt/r18/{pub,priv,sig...}, tries to unseal it (see unseal-in-guest.sh), then powers off.
# usage: make-probe-initrd.sh KERNEL_MODULE_DIR OUT.cpio.gz
set -eu
moddir=$1 out=$(realpath -m "$2")
here=$(dirname "$(realpath "$0")")
root=$(mktemp -d)
mkdir -p "$root"/bin "$root"/lib "$root"/lib64 "$root"/proc "$root"/sys "$root"/dev "$root"/tmp "$root"/mod
cp /bin/busybox "$root"/bin/
cp /usr/bin/tpm2 "$root"/bin/
for l in $(ldd /usr/bin/tpm2 /usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0 | awk '/=>/ {print $3} /ld-linux/ {print $1}' | sort -u); do
  cp -L "$l" "$root"/lib/
done
cp -L /usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0 "$root"/lib/
cp -L /lib64/ld-linux-x86-64.so.2 "$root"/lib64/
find "$moddir" \( -name efivarfs.ko -o -name qemu_fw_cfg.ko \) -exec cp {} "$root"/mod/ \;
cp "$here"/unseal-in-guest.sh "$root"/bin/unseal.sh
cat > "$root"/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin LD_LIBRARY_PATH=/lib
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
insmod /mod/efivarfs.ko; insmod /mod/qemu_fw_cfg.ko
mount -t efivarfs efivarfs /sys/firmware/efi/efivars
sb=$(od -An -tu1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c | awk '{print $5}')
echo "MARK uptime=$(cut -d' ' -f1 /proc/uptime) secureboot=$sb"
for p in 4 7 9 11 12; do echo "MARK pcr$p=$(cat /sys/class/tpm/tpm0/pcr-sha256/$p)"; done
[ -e /sys/firmware/qemu_fw_cfg/by_name/opt/r18/pub/raw ] && sh /bin/unseal.sh
echo "MARK done"
poweroff -f
INIT
chmod +x "$root"/init "$root"/bin/unseal.sh
(cd "$root" && find . | sort | cpio --quiet -o -H newc --reproducible | gzip -9n > "$out")
rm -rf "$root"
ls -l "$out"
