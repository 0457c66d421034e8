# The firewall as the kernel holds it, the sockets listening, then a listener on every probed
# port (the host probes them through QEMU forwards), then two outbound connections: one a flow
# allows (tcp/554 to the camera subnet) and one none does. When the host puts `control` on its
# server, an accept rule for 8080 proves the probe can see an open port; when it puts
# `control-done` there, the listeners stop, the rule goes and the script's next piece runs.
nft list ruleset | awk '{print "APERTURE" "-NFT| " $0}'
echo APERTURE-NFT-END
ss -Htln | while read -r _ _ _ local _; do echo "APERTURE-LISTEN $local"; done
cat > /run/listen.py <<'PY'
import resource, selectors, socket
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sel = selectors.DefaultSelector()
n = 0
for p in [@PORTS@]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", p))
    except OSError:
        continue
    s.listen(8)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    n += 1
print("APERTURE-LISTENERS", n, flush=True)
open("/run/listen.ready", "w").close()
while True:
    for key, _ in sel.select():
        try:
            c, _ = key.fileobj.accept()
            c.sendall(b"OPEN\n")
            c.close()
        except OSError:
            pass
PY
rm -f /run/listen.ready
python3 /run/listen.py &
listen_pid=$!
# Binding every probed port takes seconds under TCG: READY only once they are all bound.
for _ in $(seq 600); do [ -e /run/listen.ready ] && break; sleep 0.5; done
echo APERTURE-READY
out() { timeout 10 bash -c "exec 3<>/dev/tcp/10.0.2.2/$1 && echo 'guest to $1 DONE' >&3" && echo "APERTURE-OUT $1 ok" || echo "APERTURE-OUT $1 blocked"; }
out 554
out @DENIED_PORT@
until python3 -c "import urllib.request; urllib.request.urlopen('http://10.0.2.2:@SERVER_PORT@/control', timeout=5)" 2>/dev/null; do sleep 1; done
nft insert rule inet aperture input tcp dport 8080 accept
echo APERTURE-CONTROL-OPEN
until python3 -c "import urllib.request; urllib.request.urlopen('http://10.0.2.2:@SERVER_PORT@/control-done', timeout=5)" 2>/dev/null; do sleep 1; done
kill "$listen_pid"
handle=$(nft -a list chain inet aperture input | awk '/tcp dport 8080 accept/ {print $NF; exit}')
nft delete rule inet aperture input handle "$handle"
echo APERTURE-FIREWALL-DONE
