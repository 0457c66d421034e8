echo APERTURE-FINAL
systemctl poweroff
