#!/usr/bin/env bash
# Installs trackplane on an edge node, or into DESTDIR for packaging and
# tests; --uninstall removes what it installed (config and data stay unless
# --purge). Binaries come from BIN_DIR (default target/release: run
# `cargo build --release` first).
#
#   sudo systemd/install.sh                 # this machine
#   DESTDIR=/tmp/root systemd/install.sh    # a staging root
#   sudo systemd/install.sh --uninstall [--purge]
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR=${DESTDIR:-}
BIN_DIR=${BIN_DIR:-target/release}
mode=install purge=no
for arg in "$@"; do
  case "$arg" in
    --uninstall) mode=uninstall ;;
    --purge) purge=yes ;;
    *) echo "install.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

# source|destination|mode — the one list of what a node gets (the .deb in
# Cargo.toml lists the same).
manifest() {
  cat <<LIST
$BIN_DIR/trackplane|/usr/bin/trackplane|0755
$BIN_DIR/trackplane-shipper|/usr/bin/trackplane-shipper|0755
systemd/trackplane.service|/lib/systemd/system/trackplane.service|0644
systemd/trackplane-shipper.service|/lib/systemd/system/trackplane-shipper.service|0644
systemd/trackplane.sysusers|/usr/lib/sysusers.d/trackplane.conf|0644
systemd/trackplane.tmpfiles|/usr/lib/tmpfiles.d/trackplane.conf|0644
README.md|/usr/share/doc/trackplane/README.md|0644
docs/operations.md|/usr/share/doc/trackplane/operations.md|0644
docs/segment-format.md|/usr/share/doc/trackplane/segment-format.md|0644
LIST
}
CONFIG=/etc/trackplane/trackplane.toml
live=no
[ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && live=yes

if [ "$mode" = install ]; then
  while IFS='|' read -r src dst perm; do
    [ -e "$src" ] || { echo "install.sh: $src is missing (cargo build --release?)" >&2; exit 1; }
    install -D -m "$perm" "$src" "$DESTDIR$dst"
  done < <(manifest)
  # The config is the operator's: never overwritten.
  if [ ! -e "$DESTDIR$CONFIG" ]; then
    install -D -m 0640 systemd/trackplane.toml "$DESTDIR$CONFIG"
  fi
  install -d -m 0750 "$DESTDIR/var/lib/trackplane/catalogs"
  if [ "$live" = yes ]; then
    systemd-sysusers trackplane.conf
    systemd-tmpfiles --create trackplane.conf
    chgrp trackplane "$CONFIG"
    systemctl daemon-reload
    echo "installed; start with: systemctl enable --now trackplane trackplane-shipper"
  fi
else
  if [ "$live" = yes ]; then
    systemctl disable --now trackplane-shipper trackplane 2>/dev/null || true
  fi
  while IFS='|' read -r _ dst _; do
    rm -f "$DESTDIR$dst"
  done < <(manifest)
  rmdir "$DESTDIR/usr/share/doc/trackplane" 2>/dev/null || true
  if [ "$purge" = yes ]; then
    rm -rf "$DESTDIR/etc/trackplane" "$DESTDIR/var/lib/trackplane"
  fi
  [ "$live" = yes ] && systemctl daemon-reload
  echo "uninstalled$([ "$purge" = yes ] && echo ' (config and data purged)')"
fi
