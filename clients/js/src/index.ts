export * from "./api.js";
export * from "./compute.js";
export type { components, paths } from "./openapi.js";
