#!/usr/bin/env python3
"""The host side of the console bench: runs a VMM on a fresh pty (kvmtool reads its console
only from a terminal) and echoes every line the guest's `conbench rtt` writes (`@@P...`)
back to it, once, at once. The guest times the round trips. When the guest prints
@@CONBENCH-DONE (or TIMEOUT_S passes) it ends the VMM and prints one JSON line: the guest's
JSON lines merged ({"rtt", "load", "hwrng"}), plus {"ok", "bootMs", "echoed", "error"?, "tail"}.

usage: conbench-drive.py TIMEOUT_S -- VMM ARGV...
"""
import json, os, pty, re, select, signal, sys, time

timeout = float(sys.argv[1])
assert sys.argv[2] == "--"
cmd = sys.argv[3:]
t_start = time.monotonic()
deadline = t_start + timeout
pid, fd = pty.fork()
if pid == 0:
    os.execvp(cmd[0], cmd)

out = bytearray()
pending = b""
echoed = set()
result = {"ok": False, "echoed": 0}
ping = re.compile(rb"@@P[a-z]+-\d+")
try:
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if not r:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            result["error"] = "the VMM's terminal closed"
            break
        out.extend(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            line = line.strip(b"\r")
            m = ping.search(line)
            # Once each: a VMM that left the terminal echoing would otherwise loop forever.
            if m and m.group(0) not in echoed:
                os.write(fd, m.group(0) + b"\n")
                echoed.add(m.group(0))
                if "bootMs" not in result:
                    result["bootMs"] = int((time.monotonic() - t_start) * 1000)
            if b"@@CONBENCH-DONE" in line and b"echo" not in line:
                result["ok"] = True
        if result["ok"]:
            break
    else:
        result["error"] = f"no @@CONBENCH-DONE in {timeout:.0f} s"
finally:
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            select.select([fd], [], [], 0.1)
            try:
                out.extend(os.read(fd, 65536))
            except OSError:
                pass
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    result["echoed"] = len(echoed)
    text = out.decode("utf-8", "replace")
    for line in text.replace("\r", "").split("\n"):
        line = line.strip()
        if line.startswith('{"rtt"') or line.startswith('{"hwrng"'):
            try:
                result.update(json.loads(line))
            except ValueError:
                pass
    if result["ok"] and "rtt" not in result:
        result["ok"], result["error"] = False, "no round-trip figures from the guest"
    result["tail"] = text[-2000:]
    print(json.dumps(result), flush=True)
