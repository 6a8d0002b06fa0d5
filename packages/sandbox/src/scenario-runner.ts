// node scenario-runner.js MODULE [FILTER...]: runs MODULE's `scenarios` export and
// prints one `@@RESULT {json}` line per scenario (see reportScenarios).
import { reportScenarios, type Scenarios, scenarioModuleUrl } from "./scenarios.js";

const [module, ...filters] = process.argv.slice(2);
if (!module) {
  process.stderr.write("usage: scenario-runner MODULE [FILTER...]\n");
  process.exit(2);
}
const loaded = (await import(scenarioModuleUrl(module))) as { scenarios?: Scenarios };
if (!loaded.scenarios) {
  process.stderr.write(`${module} exports no \`scenarios\`\n`);
  process.exit(2);
}
await reportScenarios(loaded.scenarios, filters);
