#!/bin/sh
# Stage 2 of the test VM in its systemd mode (PELAGOS_VM_INIT=systemd, pelagos.init=systemd on the
# kernel command line): PID 1 for a moment on the overlay of the host's root (see initramfs-init),
# then the host's own systemd (Debian's /lib/systemd/systemd) as PID 1.
#
# The overlay's upper layer is a tmpfs, so the units written here exist only in this guest. systemd
# boots into pelagos-vm.target, which pulls in nothing of the host's boot: the system bus
# (dbus.socket + dbus.service, as Debian's but without default dependencies, so no sysinit.target
# with its fstab mounts, udev or journald) and pelagos-tests.service, which runs guest-init.sh
# (PELAGOS_VM_SYSTEMD=1: systemd has mounted /proc, /sys, /run and the cgroup2 tree itself) with
# Delegate=yes, as containerd.service runs on a Kubernetes node. guest-init.sh powers the VM off.

units=/etc/systemd/system
repo="$(cd "$(dirname "$0")/../.." && pwd)"

fail() {
    echo "vm-systemd: $*" >/dev/console
    /bin/busybox poweroff -f
}
[ -x /lib/systemd/systemd ] || fail "no /lib/systemd/systemd in the host root (apt-get install systemd)"
[ -x /usr/bin/dbus-daemon ] || fail "no /usr/bin/dbus-daemon in the host root (apt-get install dbus-daemon)"

# This guest is a VM, not the container the host may be: with /.dockerenv systemd would run in
# its container mode (taking its own argv for the kernel command line, among other things).
rm -f /.dockerenv /run/.containerenv
# Nothing of the host's own configuration: its enabled units, mounts and default target.
rm -rf "$units" /etc/systemd/system.conf.d
mkdir -p "$units"
: >/etc/fstab
# A machine id of the guest's own (systemd and dbus read it; the host's is not this machine).
cat /proc/sys/kernel/random/uuid | tr -d '-' >/etc/machine-id

cat >"$units/pelagos-vm.target" <<EOF
[Unit]
Description=pelagos test VM
Requires=pelagos-tests.service
AllowIsolate=yes
EOF

cat >"$units/dbus.socket" <<EOF
[Unit]
Description=D-Bus system bus socket
DefaultDependencies=no

[Socket]
ListenStream=/run/dbus/system_bus_socket
EOF

cat >"$units/dbus.service" <<EOF
[Unit]
Description=D-Bus system bus
DefaultDependencies=no
Requires=dbus.socket

[Service]
ExecStart=/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile --systemd-activation
StandardOutput=inherit
EOF

cat >"$units/pelagos-tests.service" <<EOF
[Unit]
Description=pelagos test suites
DefaultDependencies=no
Requires=dbus.socket dbus.service
After=dbus.socket dbus.service
# guest-init.sh powers off itself; this is for when it cannot even start.
FailureAction=poweroff-force

[Service]
Type=exec
Environment=PELAGOS_VM_SYSTEMD=1
ExecStart=/bin/sh $repo/scripts/vm/guest-init.sh
Delegate=yes
TimeoutStartSec=infinity
StandardOutput=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no
EOF

exec /lib/systemd/systemd --unit=pelagos-vm.target --log-target=console --log-level=warning --show-status=false
