# Wait for (or run again) the unit that finishes an install a power cut interrupted.
systemctl start aperture-update-resume.service; echo "APERTURE-RESUMED $?"
