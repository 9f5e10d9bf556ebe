// Types for scripts/list-sources.mjs (used by test/build-script.test.ts).
export const SOURCE_DIRS: readonly string[]
/** The C++ sources of the node-gyp build, relative to `root` with forward slashes. */
export function listSources(root?: string): string[]
