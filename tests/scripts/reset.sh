aperture-reset --level @LEVEL@ --yes
echo "APERTURE-RESET-EXIT $?"
sleep 600
