# The firewall as the kernel holds it, the sockets listening, then a listener on every probed
# port (the host probes them through QEMU forwards), then two outbound connections: one a flow
# allows (tcp/554 to the camera subnet) and one none does. When the host puts `control` on its
# server, an accept rule for 8080 proves the probe can see an open port; when it puts
# `control-done` there, the listeners stop, the rule goes and the script's next piece runs.
nft list ruleset | awk '{print "APERTURE" "-NFT| " $0}'
echo APERTURE-NFT-END
ss -Htln | while read -r _ _ _ local _; do echo "APERTURE-LISTEN $local"; done
# One listener on every probed port that is free (systemd-socket-activate: each connection
# gets `OPEN` and is closed), quietly: tracing a thousand-line loop would flood the console.
set +x
ulimit -n 8192
busy=" $(ss -Htln | awk '{n = split($4, a, ":"); print a[n]}' | sort -u | tr '\n' ' ') "
args=""
n=0
for p in $(echo "@PORTS@" | tr ',' ' '); do
	case "$busy" in *" $p "*) continue ;; esac
	args="$args -l 0.0.0.0:$p"
	n=$((n + 1))
done
systemd-socket-activate --accept --inetd $args /bin/echo OPEN > /run/listen.log 2>&1 &
listen_pid=$!
# Binding every probed port takes seconds under TCG: READY only once they are all bound.
for _ in $(seq 600); do [ "$(grep -c '^Listening on' /run/listen.log)" -ge "$n" ] && break; sleep 0.5; done
set -x
echo "APERTURE-LISTENERS $(grep -c '^Listening on' /run/listen.log)"
echo APERTURE-READY
out() { timeout 10 bash -c "exec 3<>/dev/tcp/10.0.2.2/$1 && echo 'guest to $1 DONE' >&3" && echo "APERTURE-OUT $1 ok" || echo "APERTURE-OUT $1 blocked"; }
out 554
out @DENIED_PORT@
# Whether the host's test server has the file $1 (HTTP/1.0 over bash's /dev/tcp: the image has
# no HTTP client of its own).
has() { timeout 5 bash -c 'exec 3<>/dev/tcp/10.0.2.2/@SERVER_PORT@ && printf "GET /%s HTTP/1.0\r\n\r\n" "$0" >&3 && head -n 1 <&3' "$1" 2>/dev/null | grep -q ' 200 '; }
until has control; do sleep 1; done
nft insert rule inet aperture input tcp dport 8080 accept
echo APERTURE-CONTROL-OPEN
until has control-done; do sleep 1; done
kill "$listen_pid"
handle=$(nft -a list chain inet aperture input | awk '/tcp dport 8080 accept/ {print $NF; exit}')
nft delete rule inet aperture input handle "$handle"
echo APERTURE-FIREWALL-DONE
