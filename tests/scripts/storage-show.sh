# Both encrypted volumes, the data volume's LUKS UUID, the key source and the mounts.
for v in config data; do echo "APERTURE-CRYPT-$v $(cryptsetup status aperture-$v | tr -s ' \n' ' ')"; done
echo "APERTURE-UUID $(cryptsetup luksUUID /dev/disk/by-partlabel/data)"
echo "APERTURE-KEYS $(aperture-storage status | grep 'key source')"
echo "APERTURE-MOUNTS $(findmnt -n -o SOURCE,TARGET /data | tr '\n' ' ') $(findmnt -n -o SOURCE,TARGET /config | tr '\n' ' ')"
