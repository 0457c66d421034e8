# Wait until the host puts `control` on its test server.
echo APERTURE-WAITING
until python3 -c "import urllib.request; urllib.request.urlopen('http://10.0.2.2:@SERVER_PORT@/control', timeout=5)" 2>/dev/null; do sleep 1; done
