#!/usr/bin/env node
import { main } from "./cli.js";

/** Once the command is done, how long anything it left scheduled may keep the process alive. */
const EXIT_BACKSTOP_MS = 2000;

process.exitCode = await main(process.argv.slice(2), {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  // Progress lines only where someone watches them redraw.
  ...(process.stderr.isTTY
    ? {
        stderrTerminal: {
          get columns() {
            return process.stderr.columns || 80;
          },
        },
      }
    : {}),
  ...(process.stdout.isTTY
    ? {
        stdoutTerminal: {
          get columns() {
            return process.stdout.columns || 80;
          },
          get rows() {
            return process.stdout.rows || 24;
          },
        },
      }
    : {}),
});
// E.g. after a VMM error, the code that threw may have left timers or handles behind.
setTimeout(() => process.exit(), EXIT_BACKSTOP_MS).unref();
