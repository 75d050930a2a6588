import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const source = (path: string) => fileURLToPath(new URL(`../src/${path}`, import.meta.url));

export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  base: "./", // served under any path
  // The package by its name, from its sources (an application gets the same from dist/).
  resolve: {
    alias: [
      { find: /^@kpi-service\/client\/react$/, replacement: source("react.ts") },
      { find: /^@kpi-service\/client$/, replacement: source("index.ts") },
    ],
  },
  esbuild: { jsx: "automatic" },
  build: { target: "es2022", emptyOutDir: true },
});
