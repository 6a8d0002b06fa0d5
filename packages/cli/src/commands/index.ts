import type { CommandGroup } from "../command.js";
import { guest } from "./guest.js";
import { image } from "./image.js";
import { run } from "./run.js";
import { list, pause, resume, set, stat, stop } from "./vm.js";

/**
 * Every `tskvm` command. To add one (e.g. `run`), write a `Command` or `CommandGroup` in
 * `commands/NAME.ts` and list it here; help, `--help` and exit codes come from the dispatcher.
 */
export const rootCommand: CommandGroup = {
  kind: "group",
  summary: "a KVM virtual machine monitor in TypeScript",
  commands: {
    run,
    list,
    stat,
    pause,
    resume,
    stop,
    set,
    guest,
    image,
  },
};
