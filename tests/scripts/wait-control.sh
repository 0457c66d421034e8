# Wait until the host puts `control` on its test server.
echo APERTURE-WAITING
# HTTP/1.0 over bash's /dev/tcp: the image has no HTTP client of its own.
has() { timeout 5 bash -c 'exec 3<>/dev/tcp/10.0.2.2/@SERVER_PORT@ && printf "GET /%s HTTP/1.0\r\n\r\n" "$0" >&3 && head -n 1 <&3' "$1" 2>/dev/null | grep -q ' 200 '; }
until has control; do sleep 1; done
