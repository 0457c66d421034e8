# Who may read the runtime's detections. The socket is in the runtime's own folder, group
# aperture-detections, mode 0660, and /run/aperture stays root's. Once root reads a detection
# (the runtime streams, past its model restarts), a process of nobody's is refused and the same
# with the group as a supplementary one reads a line. The hook traces its commands (set -x),
# which would print each marker a second time, quoted: off in this piece.
{ set +x; } 2>/dev/null
for _ in $(seq 60); do timeout 60 aperture-runtime detections --count 1 >/dev/null 2>&1 && break; sleep 2; done
# -L: were the folder a link into /run/private (a DynamicUser= unit's preserved runtime
# directory), the folder itself would be reported, and nobody outside the unit could reach it.
echo "RUNTIME-ACCESS: run=$(stat -c %U:%a /run/aperture) dir=$(stat -L -c %U:%a /run/aperture-runtime) socket=$(stat -c %G:%a /run/aperture-runtime/detections.sock)"
gid=$(getent group aperture-detections | cut -d: -f3)
if setpriv --reuid=65534 --regid=65534 --clear-groups timeout 60 aperture-runtime detections --count 1 >/dev/null 2>/run/nobody.err; then
	echo "RUNTIME-ACCESS-NOBODY: read"
else
	echo "RUNTIME-ACCESS-NOBODY: refused $(tr '\n' ' ' < /run/nobody.err)"
fi
for _ in 1 2 3; do
	if line=$(setpriv --reuid=65534 --regid=65534 --groups="$gid" timeout 60 aperture-runtime detections --count 1 2>/run/member.err); then
		echo "RUNTIME-ACCESS-MEMBER: read $line"
		break
	fi
	echo "RUNTIME-ACCESS-MEMBER: failed $(tr '\n' ' ' < /run/member.err)"
	sleep 5
done
set -x
