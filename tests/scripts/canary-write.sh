# A canary made on the host, written only inside the guest onto the encrypted data volume.
c='@CANARY@'
printf '%s\n' "$c" > /data/canary.txt && sync && echo APERTURE-WROTE
