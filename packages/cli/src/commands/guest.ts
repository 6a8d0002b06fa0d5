import { defaultCacheDir, GUEST_CMD_PARAM } from "@tskvm/guest-kit";
import { type Command, type CommandGroup, ExitCode, type OptionSpecs, parseCommandArgs } from "../command.js";
import { exitCodesHelp } from "../exit-codes.js";
import { buildGuestKitWithProgress } from "../progress.js";

const BUILD_OPTIONS = {
  json: { type: "boolean" },
  force: { type: "boolean" },
  "cache-dir": { type: "string" },
} as const satisfies OptionSpecs;

const build: Command = {
  kind: "command",
  summary: "build (or find in the cache) the default guest kernel and initramfs",
  help: `Usage: tskvm guest build [--json] [--force] [--cache-dir DIR]

Builds the default guest, or finds it in the cache: a Debian x86-64 kernel
(linux-image-amd64) and a busybox initramfs whose /init runs the command given as
${GUEST_CMD_PARAM}="..." on the kernel command line, prints its output and exit status on
the console, and powers off. Needs apt-get and dpkg-deb (Debian or Ubuntu) the first time.
Messages go to stderr; on a terminal, the download and the packing show bytes and rate.

Options:
  --json           print {"kernel": PATH, "initrd": PATH} on stdout (messages go to stderr)
  --force          download and build again even if a matching kit is cached
  --cache-dir DIR  cache root (default: ${defaultCacheDir()}); the kit goes in DIR/guest-kit
  -h, --help       show this help

${exitCodesHelp(["ok", "error", "usage"])}`,
  options: BUILD_OPTIONS,
  async run(args, io) {
    const { values } = parseCommandArgs(args, BUILD_OPTIONS);
    const kit = await buildGuestKitWithProgress(io, {
      ...(values["cache-dir"] !== undefined ? { cacheDir: values["cache-dir"] } : {}),
      force: values.force ?? false,
    });
    if (values.json) {
      io.stdout(`${JSON.stringify({ kernel: kit.kernel, initrd: kit.initrd })}\n`);
    } else {
      io.stdout(
        `kernel  ${kit.kernel}\n` +
          `initrd  ${kit.initrd}\n` +
          `version ${kit.kernelVersion} (modules: ${kit.modules.join(" ")})\n` +
          `append  console=ttyS0 ${GUEST_CMD_PARAM}="COMMAND"\n`,
      );
    }
    return ExitCode.ok;
  },
};

export const guest: CommandGroup = {
  kind: "group",
  summary: "the default Linux guest (kernel + initramfs)",
  commands: { build },
};
