# The updater's view of the slots, on one console line.
echo "APERTURE-STATUS $(aperture-update status --json | tr -d '\n')"
