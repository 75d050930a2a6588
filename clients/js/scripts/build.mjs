// dist/: the package as ES modules (dist/*.js) and as CommonJS (dist/cjs/*.js, which its own
// package.json marks as such), each with its declarations, for the exports map's import and
// require conditions. src/browser.ts is not part of it (scripts/build-static.mjs bundles it).
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const tsc = (project) => execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", project], { cwd: root, stdio: "inherit" });

rmSync(new URL("../dist", import.meta.url), { recursive: true, force: true });
tsc("tsconfig.build.json");
tsc("tsconfig.cjs.json");
mkdirSync(new URL("../dist/cjs", import.meta.url), { recursive: true });
writeFileSync(new URL("../dist/cjs/package.json", import.meta.url), '{ "type": "commonjs" }\n');
