import { readFileSync } from "node:fs";
import { expect, it } from "vitest";
// @ts-expect-error: a plain .mjs script without types
import { bundle, TARGET } from "../scripts/build-static.mjs";

it("the service's /static/kpi-client.js is the build of src/browser.ts", async () => {
  expect(readFileSync(TARGET, "utf8"), "run `npm run build:static` in clients/js").toBe(await bundle());
});
