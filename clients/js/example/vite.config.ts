import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const built = (path: string) => fileURLToPath(new URL(`../dist/${path}`, import.meta.url));

export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  base: "./", // served under any path
  // The package by its name, as an application gets it: the build in dist/ (`npm run build`
  // first), not the sources, so that the page tests what is shipped.
  resolve: {
    alias: [
      { find: /^@kpi-service\/client\/react$/, replacement: built("react.js") },
      { find: /^@kpi-service\/client$/, replacement: built("index.js") },
    ],
  },
  esbuild: { jsx: "automatic" },
  build: { target: "es2022", emptyOutDir: true },
});
