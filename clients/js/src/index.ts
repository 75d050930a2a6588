export * from "./api.js";
export * from "./compare.js";
export * from "./compute.js";
export type { components, paths } from "./openapi.js";
