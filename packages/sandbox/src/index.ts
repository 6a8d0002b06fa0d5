export {
  KVM_MODULES,
  type PrepareImageOptions,
  prepareSandboxImage,
  REQUIRED_MODULES,
  type SandboxImage,
  sandboxCacheDir,
} from "./image.js";
export { SANDBOX_RUN_DIR, SANDBOX_WORK } from "./init.js";
export { parseJsonLines } from "./json-lines.js";
export { canonicalModuleName, type KernelModule, moduleDepends, resolveModules } from "./modules.js";
export { type SandboxPrerequisites, sandboxPrerequisites } from "./prereq.js";
export {
  liveSandboxCount,
  qemuBinary,
  runInSandbox,
  SandboxError,
  type SandboxFile,
  type SandboxHang,
  type SandboxOptions,
  type SandboxResult,
} from "./run.js";
export {
  reportScenarios,
  runScenariosInSandbox,
  type SandboxScenarios,
  SCENARIO_RUNNER,
  type ScenarioResult,
  type Scenarios,
} from "./scenarios.js";
