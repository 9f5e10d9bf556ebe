/**
 * Errors thrown by quietstar. Native failures arrive as {@link QuietstarError} with a `code`:
 * the addon constructs this very class (registered at load time), so `instanceof` works for
 * errors raised inside native code, including rejected promises of compute-thread jobs.
 */

/** Machine-readable reason of a {@link QuietstarError}. */
export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'OUT_OF_MEMORY'
  | 'CUDA_ERROR'
  | 'ENGINE_FAILED'
  | 'DISPOSED'
  | 'UNAVAILABLE'
  | 'UNIMPLEMENTED'
  | 'INTERNAL'
  | 'ADDON_NOT_BUILT'
  /** A file is missing. The message names it. */
  | 'NOT_FOUND'
  /** A file exists but is malformed (truncated, bad header, wrong dtype or shape); the message names the file and the tensor or field. */
  | 'BAD_FILE';

export class QuietstarError extends Error {
  readonly code: ErrorCode;

  constructor(message: string, code: ErrorCode = 'INTERNAL') {
    super(message);
    this.name = 'QuietstarError';
    this.code = code;
  }
}
