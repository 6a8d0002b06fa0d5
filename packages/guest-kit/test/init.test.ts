import { describe, expect, it } from "vitest";
import {
  GUEST_BEGIN_MARKER,
  GUEST_STATUS_MARKER,
  guestCommandParam,
  initScript,
  parseGuestCommandOutput,
} from "../src/index.js";
import { CMDLINE_CASES, parseWithInit } from "./helpers.js";

describe("the init's kernel command-line parser (host sh)", () => {
  it.each(CMDLINE_CASES)("%j → status %i, %j", (cmdline, status, command) => {
    expect(parseWithInit(cmdline)).toEqual({ status, command });
  });

  it("reads what guestCommandParam writes, for any command", () => {
    const commands = [
      "uname -a",
      "ls /dev/vd* ; cat /proc/cpuinfo | head -3",
      'echo "double quotes"',
      "printf 'a\\tb\\n'; echo done\nexit 4",
      "echo héllo",
      "",
    ];
    for (const c of commands) {
      const param = guestCommandParam(c);
      expect(param).toMatch(
        c.includes('"') || c.includes("\n") || c.includes("é") ? /^tskvm\.cmd64=/ : /^tskvm\.cmd="/,
      );
      expect(parseWithInit(`console=ttyS0 ${param} quiet`)).toEqual({ status: 0, command: c });
    }
  });
});

describe("console markers", () => {
  it("are the ones the init script prints", () => {
    const script = initScript();
    expect(script).toContain(`echo "${GUEST_BEGIN_MARKER}"`);
    expect(script).toContain(`echo "${GUEST_STATUS_MARKER}$STATUS"`);
    expect(script.startsWith("#!/bin/sh\n")).toBe(true);
    expect(script).toContain("poweroff -f");
  });

  const wrap = (output: string, status: number, crlf = false) => {
    const text = `[    1.97] Run /init as init process\n${GUEST_BEGIN_MARKER}\n${output}\n${GUEST_STATUS_MARKER}${status}\n[    2.54] reboot: Power down\n`;
    return crlf ? text.replace(/\n/g, "\r\n") : text;
  };

  it("parse output and status back exactly", () => {
    for (const output of [
      "hello\n",
      "no newline at end",
      "",
      "\n",
      "two\nlines\n",
      `${GUEST_BEGIN_MARKER}\n`,
    ]) {
      for (const crlf of [false, true]) {
        expect(parseGuestCommandOutput(wrap(output, 3, crlf))).toEqual({ output, status: 3 });
      }
    }
    expect(parseGuestCommandOutput(wrap("x\n", 130))?.status).toBe(130);
  });

  it("handle a console that starts with the marker and ends without a newline", () => {
    expect(parseGuestCommandOutput(`${GUEST_BEGIN_MARKER}\nok\n\n${GUEST_STATUS_MARKER}0`)).toEqual({
      output: "ok\n",
      status: 0,
    });
  });

  it("give undefined until the command has finished", () => {
    expect(parseGuestCommandOutput("")).toBeUndefined();
    expect(parseGuestCommandOutput(`booting\n${GUEST_BEGIN_MARKER}\npartial output`)).toBeUndefined();
    expect(parseGuestCommandOutput(`${GUEST_STATUS_MARKER}0\n`)).toBeUndefined();
    expect(
      parseGuestCommandOutput(`x ${GUEST_BEGIN_MARKER}\ny\n\n${GUEST_STATUS_MARKER}0\n`),
    ).toBeUndefined();
  });
});
