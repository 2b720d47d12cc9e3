#!/bin/sh
# Debian 12, Ubuntu 22.04 / 24.04: bcc's Python bindings are python3-bpfcc.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  python3 python3-venv python3-pip python3-bpfcc "linux-headers-$(uname -r)" \
  iproute2 iputils-ping kmod procps util-linux iptables
sh "${IPVTRACE_SRC:-/ipvtrace}/vagrant/provision/common.sh"
