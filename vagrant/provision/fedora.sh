#!/bin/sh
# Fedora: bcc's Python bindings are python3-bcc; ipvlan lives in
# kernel-modules(-extra) matching the running kernel.
set -eu
dnf install -y -q python3 python3-pip python3-bcc "kernel-devel-$(uname -r)" \
  "kernel-modules-$(uname -r)" "kernel-modules-extra-$(uname -r)" \
  iproute iputils kmod procps-ng util-linux iptables-nft
sh "${IPVTRACE_SRC:-/ipvtrace}/vagrant/provision/common.sh"
