// Exit handlers for the kvm-core benchmark; they time the loop inside the vCPU worker.
export function createExitHandler(ctx) {
  const t0 = performance.now();
  let exits = 0;
  if (ctx.data.mode === "exits") {
    return (exit) => {
      exits++;
      if (exit.reason === "hlt") return { stop: "done", detail: { exits, ms: performance.now() - t0 } };
      return undefined;
    };
  }
  return (exit) => {
    if (exit.reason === "io" && exit.port === 0x10)
      return { stop: "done", detail: { ms: performance.now() - t0 } };
    if (exit.reason === "interrupted") return undefined;
    return { stop: `unexpected ${exit.reason}` };
  };
}
