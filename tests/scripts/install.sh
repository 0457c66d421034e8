# Install a bundle from the host's test server (plain HTTP: test images only).
aperture-update install --insecure-http @URL@ && echo APERTURE-INSTALLED
