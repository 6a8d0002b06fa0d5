#!/bin/sh
# /init of the tskvm default guest (@tskvm/guest-kit). Runs under busybox sh as PID 1.
#
# Kernel command line:
#   tskvm.cmd="COMMAND"   run COMMAND with `sh -c`, print its output between marker lines,
#                         then power off. COMMAND must not contain double quotes.
#   tskvm.cmd64=BASE64    the same, with COMMAND base64-encoded (any bytes; wins over tskvm.cmd).
#   (neither)             start an interactive shell on the console; power off when it exits.
#   tskvm.verbose         keep kernel messages on the console while the command runs.
#   tskvm.reboot          end with `reboot -f` instead of `poweroff -f`.
#   (Ctrl-Alt-Del)        sync and power off at once: `tskvm stop` asks for it through the
#                         keyboard controller.
#   console=hvc0          (the last console=) once the modules are loaded, the script and the
#                         command use /dev/hvc0 (the virtio console) if it opens.
#   MODULE.PARAM=VALUE    passed to insmod for the bundled modules, as modprobe would.
#
# Markers on the console (stdout and stderr of the command go between them):
#   tskvm: command begin
#   ...output...
#   (one empty line, so the marker below always starts a line)
#   tskvm: command exited with status N
#
# Run as anything but PID 1 (e.g. in tests on the host), the script only prints the command
# it would run, read from $TSKVM_CMDLINE_FILE (default /proc/cmdline), and exits with
# status 0, or 1 if there is none, or 2 if tskvm.cmd64 does not decode.

# tskvm_cmdline MODE NAME FILE: reads a kernel command line the way the kernel splits it
# (init/main.c next_arg: spaces separate arguments except inside double quotes; quotes
# around a whole argument or around a value are dropped; "-" and "_" are the same in
# names; nothing after a lone "--" is a kernel parameter).
#   get NAME     print the value of the last NAME=VALUE; status 1 if there is none
#   flag NAME    status 0 if NAME or NAME=... is present
#   prefix P     print every PREFIX-matching P.KEY=VALUE as KEY=VALUE, one per line
tskvm_cmdline() {
  awk -v mode="$1" -v want="$2" '
    function norm(s) { gsub(/-/, "_", s); return s }
    { line = line $0 " " }
    END {
      want = norm(want); found = 0; n = length(line); i = 1
      while (i <= n) {
        while (i <= n && (substr(line, i, 1) == " " || substr(line, i, 1) == "\t")) i++
        if (i > n) break
        start = i; inq = 0
        while (i <= n) {
          c = substr(line, i, 1)
          if (!inq && (c == " " || c == "\t")) break
          if (c == "\"") inq = !inq
          i++
        }
        a = substr(line, start, i - start)
        if (a == "--") break
        strip = 0
        if (substr(a, 1, 1) == "\"") { a = substr(a, 2); strip = 1 }
        eq = index(a, "=")
        if (eq > 0) {
          p = substr(a, 1, eq - 1); v = substr(a, eq + 1); hasv = 1
          if (substr(v, 1, 1) == "\"") { v = substr(v, 2); strip = 1 }
        } else { p = a; v = ""; hasv = 0 }
        if (strip) {
          if (hasv && substr(v, length(v), 1) == "\"") v = substr(v, 1, length(v) - 1)
          else if (!hasv && substr(p, length(p), 1) == "\"") p = substr(p, 1, length(p) - 1)
        }
        p = norm(p)
        if (mode == "get" && hasv && p == want) { value = v; found = 1 }
        else if (mode == "flag" && p == want) found = 1
        else if (mode == "prefix" && hasv && substr(p, 1, length(want)) == want && length(p) > length(want)) {
          print substr(p, length(want) + 1) "=" v; found = 1
        }
      }
      if (mode == "get" && found) print value
      exit (found ? 0 : 1)
    }' "$3"
}

# tskvm_command FILE: prints the command to run (status 0), or status 1 if none, 2 if undecodable.
tskvm_command() {
  if _tskvm_b64=$(tskvm_cmdline get tskvm.cmd64 "$1"); then
    case $_tskvm_b64 in *[!A-Za-z0-9+/=]*) return 2 ;; esac
    printf '%s\n' "$_tskvm_b64" | base64 -d 2>/dev/null || return 2
  elif _tskvm_cmd=$(tskvm_cmdline get tskvm.cmd "$1"); then
    printf '%s\n' "$_tskvm_cmd"
  else
    return 1
  fi
}

CMDLINE=${TSKVM_CMDLINE_FILE:-/proc/cmdline}

if [ "$$" != 1 ]; then
  tskvm_command "$CMDLINE"
  exit $?
fi

export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=linux
umask 022
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null # may already be there (CONFIG_DEVTMPFS_MOUNT)
# /dev/console may not open yet: with only console=hvc0 (kvmtool's --console virtio, QEMU's
# virtconsole) no console exists until virtio_console is loaded below, and a failed `exec`
# redirection would end PID 1.
if (: </dev/console) 2>/dev/null; then exec 0</dev/console 1>/dev/console 2>&1; fi
hostname tskvm

# Kernel modules, in dependency order (written by the builder).
KVER=$(uname -r)
if [ -s /etc/tskvm/modules ]; then
  if [ -d "/lib/modules/$KVER" ]; then
    set -f
    while read -r mod; do
      [ -n "$mod" ] || continue
      name=${mod##*/}
      name=$(echo "${name%.ko}" | tr - _)
      IFS='
'
      # shellcheck disable=SC2046 # one parameter per line
      set -- $(tskvm_cmdline prefix "$name." "$CMDLINE")
      unset IFS
      insmod "/lib/modules/$KVER/$mod" "$@" || echo "tskvm: insmod $mod failed"
    done </etc/tskvm/modules
    set +f
  else
    echo "tskvm: no modules for kernel $KVER in this initramfs (built for $(cat /etc/tskvm/kernel-version)); not loading any"
  fi
fi

# console=hvc0 last (tskvm run --console virtio): virtio_console is a module, so the kernel
# opened /dev/console for this script before hvc0 existed; move to hvc0 now that it does
# (if it opens: a failed `exec` redirection would end PID 1).
# A multiport device (QEMU's virtio-serial) adds its ports after the driver is ready: give
# hvc0 up to 5 s to appear.
if [ "$(tskvm_cmdline get console "$CMDLINE")" = hvc0 ]; then
  _tskvm_wait=0
  while [ ! -c /dev/hvc0 ] && [ $_tskvm_wait -lt 50 ]; do
    sleep 0.1
    _tskvm_wait=$((_tskvm_wait + 1))
  done
  if [ -c /dev/hvc0 ] && (: </dev/hvc0) 2>/dev/null; then exec 0</dev/hvc0 1>/dev/hvc0 2>&1; fi
fi

tskvm_end() {
  sync
  if tskvm_cmdline flag tskvm.reboot "$CMDLINE"; then reboot -f; fi
  poweroff -f
  reboot -f
  sleep 1
  exit 1
}

# Ctrl-Alt-Del (`tskvm stop`, through the keyboard controller) signals this script instead of
# restarting at once (kernel.ctrl-alt-del=0 sends SIGINT to PID 1): sync and power off, as an
# init would. The command runs in the background and the script waits for it, because a shell
# runs a trap only between commands and `wait` is the one it interrupts.
tskvm_ctrl_alt_del() {
  echo
  echo "tskvm: Ctrl-Alt-Del: syncing the disks and powering off"
  sync
  poweroff -f
  reboot -f
}
trap tskvm_ctrl_alt_del INT
echo 0 >/proc/sys/kernel/ctrl-alt-del
# A background command's stdin would be /dev/null: hand it the console through fd 3.
exec 3<&0

CMD=$(tskvm_command "$CMDLINE")
FOUND=$?
case $FOUND in
  0)
    tskvm_cmdline flag tskvm.verbose "$CMDLINE" || echo 1 >/proc/sys/kernel/printk
    cd /root || cd /
    echo "tskvm: command begin"
    sh -c "$CMD" <&3 3<&- &
    wait $!
    STATUS=$?
    echo
    echo "tskvm: command exited with status $STATUS"
    ;;
  2)
    echo "tskvm: tskvm.cmd64 is not valid base64; powering off"
    ;;
  *)
    echo "tskvm: no tskvm.cmd on the kernel command line; starting a shell (exit it to power off)"
    cd /root || cd /
    setsid cttyhack sh -l <&3 3<&- &
    wait $!
    ;;
esac
tskvm_end
