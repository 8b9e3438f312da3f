#!/usr/bin/env bash
# Installs everything Hearth needs on a Debian machine, idempotently: system packages,
# uv, and the project's locked Python environment. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-system-x86, qemu-utils, lz4, e2fsprogs, cpio, procps: the microvm runtime (QEMU,
# qcow2 overlays, the guest kernel's LZ4 payload, ext4 images, the initramfs, sysctl);
# openssl: the certificates of the old-SDK tests' TLS front; libnss-myhostname: glibc
# resolves `*.localhost` (the sandbox hosts `sandbox.get_host()` names) to loopback; lxcfs:
# container sandboxes' own /proc/meminfo, cpuinfo, stat, uptime; chromium: the browser the
# dashboard's tests drive (Playwright downloads none).
apt_packages=(busybox-static debootstrap util-linux iproute2 ca-certificates nodejs npm postgresql crun runc nftables
  qemu-system-x86 qemu-utils lz4 e2fsprogs cpio procps skopeo umoci docker-registry openssl
  libnss-myhostname lxcfs chromium)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# The machine may already carry Node.js from elsewhere; Debian's is only a fallback.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -r -a missing <<<"${missing[*]}"
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian's docker-registry package enables a public registry on :5000; the tests run
  # their own on loopback.
  if [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
  # Likewise Debian's lxcfs starts a host-wide daemon on /var/lib/lxcfs; each Hearth
  # node runs its own.
  if [[ " ${missing[*]} " == *" lxcfs "* ]] && command -v systemctl >/dev/null; then
    systemctl disable --now lxcfs >/dev/null 2>&1 || true
  fi
fi

# The package adds `myhostname` after `files` on the hosts line of nsswitch.conf only at
# its first installation; a line edited since (or written by an image) may lack it.
if [[ -f /etc/nsswitch.conf ]] && ! grep -qE '^hosts:[^#]*\smyhostname(\s|#|$)' /etc/nsswitch.conf; then
  echo "setup: adding myhostname to the hosts line of /etc/nsswitch.conf" >&2
  if grep -qE '^hosts:[^#]*\sfiles(\s|#|$)' /etc/nsswitch.conf; then
    sed -E -i '/^hosts:/ s/(\sfiles(\s+\[[^]]+\])?)(\s|#|$)/\1 myhostname\3/' /etc/nsswitch.conf
  elif grep -qE '^hosts:' /etc/nsswitch.conf; then
    sed -E -i '/^hosts:/ s/^hosts:(\s*)/hosts:\1myhostname /' /etc/nsswitch.conf
  else
    echo "hosts: files myhostname dns" >>/etc/nsswitch.conf
  fi
fi

if ! command -v uv >/dev/null; then
  echo "setup: installing uv" >&2
  python3 -m pip install -q uv 2>/dev/null || python3 -m pip install -q --break-system-packages uv
fi
uv sync -q --frozen --all-groups
