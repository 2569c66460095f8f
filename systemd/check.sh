#!/usr/bin/env bash
# Checks the systemd units and the installer (part of scripts/test):
# - both units pass `systemd-analyze verify`;
# - `systemd-analyze security --offline=yes` rates each at most 2.0;
# - the shipper's unit leaves /proc/locks visible;
# - install into a scratch root puts every file in place, keeps an
#   operator's config on reinstall, and uninstall removes it all again;
# - the .deb (cargo deb) carries exactly the files install.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "check.sh: needs systemd-analyze (apt-get install systemd)"; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

DESTDIR="$root" systemd/install.sh
for f in usr/bin/trackplane usr/bin/trackplane-shipper lib/systemd/system/trackplane.service \
         lib/systemd/system/trackplane-shipper.service usr/lib/sysusers.d/trackplane.conf \
         usr/lib/tmpfiles.d/trackplane.conf etc/trackplane/trackplane.toml var/lib/trackplane/catalogs \
         usr/share/doc/trackplane/operations.md; do
  [ -e "$root/$f" ] || { echo "check.sh: install left out /$f"; exit 1; }
done
"$root/usr/bin/trackplane" check-config "$root/etc/trackplane/trackplane.toml"

# The .deb carries exactly the files install.sh installs.
cargo deb --no-build --no-strip -p trackplane -o "$root/trackplane.deb" >/dev/null
deb_files=$(dpkg-deb -c "$root/trackplane.deb" | awk '{print $6}' | grep -v '/$' | grep -v '/copyright$' | sed 's|^\.||' | sort)
installed=$(cd "$root" && find . -type f ! -name trackplane.deb | sed 's|^\.||' | sort)
if [ "$deb_files" != "$installed" ]; then
  echo "check.sh: the .deb and install.sh differ:"; diff <(echo "$deb_files") <(echo "$installed"); exit 1
fi
echo "trackplane.deb: same $(echo "$deb_files" | wc -l) files as install.sh"

for unit in trackplane trackplane-shipper; do
  # verify needs the ExecStart binaries: point them into the scratch root.
  sed "s|/usr/bin/|$root/usr/bin/|" "$root/lib/systemd/system/$unit.service" > "$root/$unit.service"
  systemd-analyze verify "$root/$unit.service"
  score=$(systemd-analyze security --offline=yes "$root/$unit.service" 2>/dev/null | sed -nE 's/.*Overall exposure level for .*: ([0-9.]+).*/\1/p')
  echo "$unit.service: exposure $score"
  awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || { echo "check.sh: $unit.service exposure $score is above 2.0"; exit 1; }
done

# The shipper's watermarks read /proc/locks (store::lease); ProcSubset=pid
# would hide it, and they would pass events a failing server still holds.
if grep -q '^ProcSubset=pid' systemd/trackplane-shipper.service; then
  echo "check.sh: trackplane-shipper.service hides /proc/locks (ProcSubset=pid)"; exit 1
fi

echo "# edited by the operator" >> "$root/etc/trackplane/trackplane.toml"
DESTDIR="$root" systemd/install.sh
grep -q "edited by the operator" "$root/etc/trackplane/trackplane.toml" || { echo "check.sh: reinstall overwrote the config"; exit 1; }
DESTDIR="$root" systemd/install.sh --uninstall
left=$(cd "$root" && find usr lib -type f 2>/dev/null | grep -v '\.service$' || true)
[ -z "$left" ] || { echo "check.sh: uninstall left: $left"; exit 1; }
[ -e "$root/etc/trackplane/trackplane.toml" ] || { echo "check.sh: uninstall removed the config"; exit 1; }
DESTDIR="$root" systemd/install.sh --uninstall --purge
[ ! -e "$root/etc/trackplane" ] && [ ! -e "$root/var/lib/trackplane" ] || { echo "check.sh: purge left config or data"; exit 1; }
echo "systemd units and installer: ok"
