# Point the inference runtime at a camera on the config partition (it replaces the recipe's),
# restart it, then report in the background its unit state, how many detections of a person
# its rolling file holds, and its metrics, every 2 s, until the host ends the boot.
# The file is root's alone (camera URLs may hold passwords): the unit gets it as a credential.
mkdir -p /config/runtime
chmod 0700 /config/runtime
printf '[[camera]]\nname = "@CAMERA@"\nurl = "@URL@"\n' > /config/runtime/cameras.toml
chmod 0600 /config/runtime/cameras.toml
systemctl restart aperture-runtime.service
watch_runtime() {
	while true; do
		persons=$(grep -c '"label":"person"' /var/lib/aperture-runtime/detections/detections.jsonl 2>/dev/null)
		echo "RUNTIME-WATCH: $(systemctl is-active aperture-runtime.service) persons=${persons:-0} $(tr -d '\n' < /run/aperture-runtime/runtime.json 2>/dev/null)"
		sleep 2
	done
}
watch_runtime &
