// kpi_service/static/kpi-client.js from src/browser.ts: `node scripts/build-static.mjs`.
// test/static.test.ts fails when the committed file is not this build's output.
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

export const TARGET = fileURLToPath(new URL("../../../kpi_service/static/kpi-client.js", import.meta.url));

export async function bundle() {
  const result = await build({
    entryPoints: [fileURLToPath(new URL("../src/browser.ts", import.meta.url))],
    bundle: true,
    format: "esm",
    target: "es2022",
    write: false,
    legalComments: "none",
    banner: {
      js: "// Built from clients/js/src/browser.ts by clients/js/scripts/build-static.mjs. Do not edit:\n// change the package and run `npm run build:static` in clients/js.",
    },
  });
  return result.outputFiles[0].text;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) writeFileSync(TARGET, await bundle());
