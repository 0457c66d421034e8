# A reset still in progress goes on at this boot (it reboots by itself): wait for it.
if ! aperture-reset status | grep -q 'no reset in progress'; then aperture-reset status; echo APERTURE-RESET-PENDING; sleep 900; fi
