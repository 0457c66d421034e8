# Not the canary itself: this boot's journal (on the new /data) records the script.
if [ -e /data/canary.txt ]; then echo APERTURE-CANARY-FOUND; else echo APERTURE-CANARY-GONE; fi
echo "APERTURE-DATA-FILES $(ls -A /data | tr '\n' ' ')"
