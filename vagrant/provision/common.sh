#!/bin/sh
# Shared by the distribution scripts: a venv that sees the distribution's bcc
# (--system-site-packages), ipvtrace installed into it from the synced tree.
set -eu
src=${IPVTRACE_SRC:-/ipvtrace}
venv=/opt/ipvtrace-venv
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e "${src}[test]"
"$venv/bin/python" -c 'import bcc, ipvtrace, pyroute2, rich' 
modprobe ipvlan
modprobe veth
echo "provisioned: $(uname -r), $("$venv/bin/python" --version), bcc from $("$venv/bin/python" -c 'import bcc, os; print(os.path.dirname(bcc.__file__))')"
