/**
 * An operator-facing failure of a tool: the message is printed after one
 * "nbd-mirror: " prefix, and the process exits with `exitCode` (status uses
 * mdadm --detail --test's codes; see docs/operations.md).
 */
export class ToolError extends Error {
  constructor(message: string, readonly exitCode = 2) {
    super(message);
    this.name = 'ToolError';
  }
}

/** status: nothing to report on (no configuration, no log, server unreachable). */
export const exitNoSuchMirror = 4;
