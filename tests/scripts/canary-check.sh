c='@CANARY@'
if [ "$(cat /data/canary.txt 2>/dev/null)" = "$c" ]; then echo APERTURE-CANARY-KEPT; else echo APERTURE-CANARY-LOST; fi
