# A reset still in progress goes on at this boot: its second half runs once the health gate has
# committed the factory slot, or it reboots into the other slot (which ends this script). Wait
# until no reset is in progress, at most 15 minutes.
n=0
while ! aperture-reset status | grep -q 'no reset in progress'; do
    if [ "$n" = 0 ]; then aperture-reset status; echo APERTURE-RESET-PENDING; fi
    n=$((n + 1))
    [ "$n" -gt 180 ] && break
    sleep 5
done
